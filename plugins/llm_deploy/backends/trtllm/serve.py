"""trtllm's "launch Triton": upstream's launch_triton_server.py under our supervisor.

launch_triton_server.py starts ``mpirun ... tritonserver`` and exits at once, so the runner
watches the supervisor (``supervisor.py``), which lives as long as anything the launcher started.
The server is ready when it and every model in the repository report ready.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.trtllm import commands, supervisor, validation
from llm_deploy.backends.trtllm.execution import gpus, paths_for, preflight, runner, wheel_prefix
from llm_deploy.records import ServerRecord
from llm_deploy.runners.command import StepCommand, VolumePath
from llm_deploy.server import readiness
from llm_deploy.server.ports import check_ports_free, client_host
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def launch_command(spec: DeploySpec, model_repo: str) -> StepCommand:
    argvs = wheel_prefix(spec) + commands.launch_server(spec, paths_for(spec, model_repo_dir=model_repo))
    return StepCommand(
        name="start_server",
        argv=(commands.PYTHON, "-c", supervisor.source(), json.dumps(argvs)),
        env={"PYTHONUNBUFFERED": "1"},
        volume_paths=(VolumePath(str(spec.root), writable=False),),
        gpus=gpus(spec),
        network_host=True,
        # What a Service publishes where the runner has no host network to share (kubernetes).
        ports={"http": spec.http_port, "grpc": spec.grpc_port, "metrics": spec.metrics_port},
    )


def start_server(spec: DeploySpec, model_repo: Path, log_path: Path) -> ServerRecord:
    """Launch Triton with upstream's script; return its record once it is ready.

    On any failure what was started is stopped again: no orphan server outlives a failed start.
    """
    log.info("launching tritonserver (world_size %d) with launch_triton_server.py; log: %s",
             spec.world_size, log_path)
    on = runner(spec)
    preflight(spec, on, "start_server")
    engine_dir = volume.served_engine_dir(model_repo)
    if engine_dir:  # none in the llmapi flow
        validation.check_engine_world_size(spec, engine_dir)
    if on.name != "kubernetes":  # a pod's ports are its own, behind a Service of its own
        check_ports_free(spec.server_host, {"http": spec.http_port, "grpc": spec.grpc_port,
                                            "metrics": spec.metrics_port})
    service = on.start(launch_command(spec, str(model_repo)), str(log_path))
    host = service.address or client_host(spec.server_host)
    http_url = f"http://{host}:{spec.http_port}"
    try:
        readiness.wait_ready(http_url, readiness.repository_models(model_repo), alive=lambda: on.alive(service),
                             output=lambda: on.logs(service), timeout_s=spec.server_start_timeout_s,
                             log_path=str(log_path))
    except BaseException:
        on.stop(service, grace_s=0)
        raise
    log.info("tritonserver ready: %s (%s runner)", http_url, service.runner)
    return ServerRecord(
        pid=service.pid,
        pgid=service.pgid,
        http_url=http_url,
        grpc_url=f"{host}:{spec.grpc_port}",
        metrics_url=f"http://{host}:{spec.metrics_port}/metrics",
        log_path=str(log_path),
        model_repo=str(model_repo),
        service=service.to_xcom(),
    )
