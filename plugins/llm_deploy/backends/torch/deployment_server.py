"""The twin's deployment server: pytriton's tritonserver, a process of the worker, under our
supervisor, in explicit model-control mode on the deployment's ports."""

from __future__ import annotations

import os
from pathlib import Path

from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec


def refusal(spec: DeploySpec) -> str | None:
    if spec.runner in ("docker", "kubernetes"):
        # Its Python steps run in one-shot containers (pods); a server started from one would end with it.
        return ("the twin's deployment server is a process of the worker, and with "
                f"runner={spec.runner!r} the twin's steps run in one-shot containers: promote with runner='local'")
    if spec.world_size > 1:
        # The run's own server launches every rank under mpirun (serve.py); the supervisor of a
        # long-running deployment starts tritonserver alone, so it serves one rank's engines.
        return (f"world_size={spec.world_size}: the twin's deployment server runs engines of one rank; this run "
                "qualified the engine on its own server over all ranks, and the deployment keeps its live version")
    return None


def launch(spec: DeploySpec, repository: Path) -> ServerLaunch:
    paths, server_env = tritonserver.prepare()
    argv = tritonserver.server_command(paths, repository, host=spec.server_host, http_port=spec.deployment_http_port,
                                       grpc_port=spec.deployment_grpc_port, metrics_port=spec.deployment_metrics_port)
    # Only what the server needs on top of the worker's environment goes on the volume: the
    # worker's own variables (its secrets among them) reach the supervisor as its environment.
    env = {key: value for key, value in server_env.items() if os.environ.get(key) != value}
    return ServerLaunch(runner="local", argv=(*argv, "--model-control-mode=explicit"), env=env,
                        workdir=str(repository))
