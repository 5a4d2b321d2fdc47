"""The process of a deployment's container: serve what is live now, then let Docker restart it.

A deployment run by the docker runner is one container of the release's image, created with
``--restart unless-stopped``. Each time Docker (re)starts it, this entry reads the deployment's
``server.json`` and ``deployment.json`` on the engines volume, runs the setup commands (a wheel to
install), and replaces itself with tritonserver plus one ``--load-model`` per model of the version
live at that moment: after a promotion or a rollback, a restart serves what is live, not what
the container first served. When tritonserver exits, the container exits, and Docker's restart
policy (with its own growing delay) starts it again; ``docker stop`` ends it for good.

It runs inside the release's NGC image, where llm_deploy is not installed: standard library only,
sent as the source of a ``python3 -c`` (``source()``) whose one argument is the deployment's
directory. Our supervisor builds the server's command with the same ``command``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SERVER_SPEC = "server.json"  # deployment.launch.SERVER_SPEC
RECORD = "deployment.json"  # deployment.record.RECORD


def source() -> str:
    """This module's code, for ``python3 -c``."""
    with open(__file__, encoding="utf-8") as handle:
        return handle.read()


def live_models(directory: str, ensemble: str) -> list[str]:
    with open(os.path.join(directory, RECORD), encoding="utf-8") as handle:
        deployment = json.load(handle)
    for version in deployment.get("versions", []):
        if version["version"] == deployment.get("live"):
            return [*version["models"].values(), ensemble]
    return []


def read_spec(directory: str) -> dict:
    """``server.json``: the launch, the ensemble clients call, and the server's HTTP URL."""
    with open(os.path.join(directory, SERVER_SPEC), encoding="utf-8") as handle:
        return json.load(handle)


def command(directory: str, spec: dict | None = None) -> tuple[list[list[str]], list[str], dict[str, str]]:
    """The setup commands, the server's argv for the live version, and its environment; ``spec``:
    ``read_spec``'s answer, if the caller has it already."""
    spec = spec or read_spec(directory)
    launch = spec["launch"]
    argv = list(launch["argv"]) + [f"--load-model={name}" for name in live_models(directory, spec["ensemble"])]
    return [list(c) for c in launch.get("setup", [])], argv, {**os.environ, **launch.get("env", {})}


def main(args: list[str]) -> int:
    setup, argv, env = command(args[1])
    for step in setup:
        print("llm_deploy deployment: + " + " ".join(step), flush=True)
        code = subprocess.call(step, env=env)
        if code:
            return code
    print("llm_deploy deployment: + " + " ".join(argv), flush=True)
    os.execvpe(argv[0], argv, env)
    return 127  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
