"""A stand-in for the NGC image's /opt/tritonserver/bin/tritonserver, for a deployment's server.

It takes the tritonserver options our commands pass (anything else is refused, as tritonserver
refuses an unknown option), and does what a deployment needs of the real one over HTTP: health,
model and model-version readiness, and in explicit model-control mode the repository API
(index, load, unload), loading a model only if its directory and config.pbtxt exist, and serving
of an ensemble only the versions its ``version_policy: specific`` names, as Triton does. Each
start is appended to ``$STANDIN_CALLS`` (the toolbox's calls file) with its argv.

Standard library only: it runs under whichever python3 the stand-in image has.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import signal
import sys
from pathlib import Path

CALLS_ENV = "STANDIN_CALLS"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tritonserver", allow_abbrev=False)
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--model-control-mode", choices=("none", "poll", "explicit"), default="none")
    parser.add_argument("--load-model", action="append", default=[])
    parser.add_argument("--http-address", default="0.0.0.0")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-address", default="0.0.0.0")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--disable-auto-complete-config", action="store_true")
    parser.add_argument("--backend-config", action="append", default=[])
    args = parser.parse_args(argv)
    if args.load_model and args.model_control_mode != "explicit":
        parser.exit(1, "Error: Use of '--load-model' requires setting '--model-control-mode=explicit' as well.\n")
    return args


class Repository:
    def __init__(self, root: str, explicit: bool, startup: list[str]) -> None:
        self.root = Path(root)
        self.explicit = explicit
        self.loaded: dict[str, set[int]] = {}
        for name in (startup if explicit else self.names()):
            if not self.load(name):
                sys.exit(f"E stand-in tritonserver: failed to load '{name}': no such model in {root}")

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/config.pbtxt"))

    def versions(self, name: str) -> set[int]:
        """The versions Triton would serve: the numbered directories, or those the policy names."""
        model = self.root / name
        present = {int(p.name) for p in model.iterdir() if p.is_dir() and p.name.isdigit()}
        policy = re.search(r"specific\s*\{\s*versions:\s*\[?([0-9,\s]+)\]?", (model / "config.pbtxt").read_text())
        if policy:
            return present & {int(v) for v in re.findall(r"[0-9]+", policy.group(1))}
        return {max(present)} if present else set()

    def load(self, name: str) -> bool:
        if not (self.root / name / "config.pbtxt").is_file():
            return False
        self.loaded[name] = self.versions(name)
        return True

    def index(self) -> list[dict]:
        return [{"name": name, **({"version": str(max(self.loaded[name])), "state": "READY"}
                                 if self.loaded.get(name) else {"state": "UNAVAILABLE"})} for name in self.names()]


def handler(repository: Repository):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path
            ready = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/([0-9]+))?/ready", path)
            if path in ("/v2/health/live", "/v2/health/ready"):
                ok = True
            elif ready:
                versions = repository.loaded.get(ready.group(1), set())
                ok = bool(versions) and (ready.group(2) is None or int(ready.group(2)) in versions)
            else:
                ok = False
            self._answer(200 if ok else 400, {} if ok else {"error": f"{path}: not ready"})

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path == "/v2/repository/index":
                return self._answer(200, repository.index())
            action = re.fullmatch(r"/v2/repository/models/([^/]+)/(load|unload)", self.path)
            if not action:
                return self._answer(404, {"error": f"no endpoint {self.path}"})
            if not repository.explicit:
                return self._answer(503, {"error": "explicit model load / unload is not allowed if polling is "
                                                   "enabled"})
            name, verb = action.groups()
            if verb == "unload":
                repository.loaded.pop(name, None)
                return self._answer(200, {})
            if not repository.load(name):
                return self._answer(400, {"error": f"failed to load '{name}', failed to poll from model repository"})
            return self._answer(200, {})

        def _answer(self, status: int, payload) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    return Handler


def main(argv: list[str]) -> int:
    args = parse(argv)
    if os.environ.get(CALLS_ENV):
        with open(os.environ[CALLS_ENV], "a") as calls:
            calls.write(json.dumps({"script": "tritonserver", "argv": argv, "rank": 0}) + "\n")
    repository = Repository(args.model_repository, args.model_control_mode == "explicit", args.load_model)
    server = http.server.ThreadingHTTPServer((args.http_address, args.http_port), handler(repository))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"stand-in tritonserver: {len(repository.loaded)} model(s) loaded; HTTP on "
          f"{args.http_address}:{args.http_port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
