"""Tutorial steps "launch Triton" and, for the DAG's teardown, stopping it again.

start_server is an Airflow setup task: it returns only when Triton reports the server and every
model ready, and on any failure it kills what it started, so no orphan server outlives a failed
start. stop_server is the teardown: it runs even when the benchmark failed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    pgid: int
    http_url: str
    grpc_url: str
    metrics_url: str
    log_path: str
    model_repo: str
    # trtllm: the runner's record of launch_triton_server.py (process group or container).
    service: dict | None = None
    # The engine's lease file: retention leaves a served engine alone until stop_server.
    lease: str = ""

    def to_xcom(self) -> dict:
        return asdict(self)


def start_server(spec: DeploySpec, repo: dict, run_id: str) -> ServerRecord:
    check_served_files(spec, Path(repo["model_repo"]))
    log_path = volume.run_dir(spec, run_id) / "tritonserver.log"
    record = _start_trtllm(spec, repo, log_path) if spec.backend == "trtllm" else _start_torch(spec, repo, log_path)
    engine_dir = (volume.read_manifest(Path(repo["model_repo"])) or {}).get("settings", {}).get("engine_dir")
    if not engine_dir:
        return record
    from llm_deploy import engine_cache

    service = record.service or {}
    lease = engine_cache.take_lease(engine_dir, run_id=run_id, pid=record.pid,
                                    container_id=service.get("container_id", ""))
    return replace(record, lease=str(lease))


def _start_torch(spec: DeploySpec, repo: dict, log_path: Path) -> ServerRecord:
    from llm_deploy.server import tritonserver

    log.info("starting tritonserver on %s (HTTP %d, gRPC %d); server log: %s",
             spec.server_host, spec.http_port, spec.grpc_port, log_path)
    try:
        handle = tritonserver.start(
            Path(repo["model_repo"]),
            host=spec.server_host,
            http_port=spec.http_port,
            grpc_port=spec.grpc_port,
            metrics_port=spec.metrics_port,
            log_path=log_path,
            timeout_s=spec.server_start_timeout_s,
        )
    except (tritonserver.PortInUseError, tritonserver.StubEnvironmentError) as exc:
        raise NonRetryableError(str(exc)) from None
    except tritonserver.ServerStartError as exc:
        raise StepError(str(exc)) from None
    log.info("tritonserver ready: pid %d, %s", handle.pid, handle.http_url)
    return ServerRecord(
        pid=handle.pid,
        pgid=handle.pgid,
        http_url=handle.http_url,
        grpc_url=handle.grpc_url,
        metrics_url=handle.metrics_url,
        log_path=str(log_path),
        model_repo=repo["model_repo"],
    )


def _start_trtllm(spec: DeploySpec, repo: dict, log_path: Path) -> ServerRecord:
    """Tutorial "launch Triton": upstream's launch_triton_server.py through the spec's runner."""
    from llm_deploy.backends.trtllm import pipeline
    from llm_deploy.runners import runner_for
    from llm_deploy.server import tritonserver

    log.info("launching tritonserver (world_size %d) with launch_triton_server.py; log: %s",
             spec.world_size, log_path)
    try:
        service, http_url = pipeline.start_server(spec, repo["model_repo"], log_path, runner_for(spec))
    except tritonserver.PortInUseError as exc:
        raise NonRetryableError(str(exc)) from None
    host = http_url.rsplit(":", 1)[0].removeprefix("http://")
    log.info("tritonserver ready: %s (%s runner)", http_url, service.runner)
    return ServerRecord(
        pid=service.pid,
        pgid=service.pgid,
        http_url=http_url,
        grpc_url=f"{host}:{spec.grpc_port}",
        metrics_url=f"http://{host}:{spec.metrics_port}/metrics",
        log_path=str(log_path),
        model_repo=repo["model_repo"],
        service=service.to_xcom(),
    )


def check_served_files(spec: DeploySpec, model_repo: Path) -> None:
    """Hash every file the server would load against its manifest: the model repository, the
    engine and the checkpoint (tokenizer). Published engines are reused across runs for weeks, so
    bit rot or a stray write on the volume must stop the start here, not produce wrong tokens."""
    repo_manifest = volume.read_manifest(model_repo) or {}
    settings = repo_manifest.get("settings", {})
    dirs = [model_repo] + [Path(settings[key]) for key in ("engine_dir", "tokenizer_dir") if key in settings]
    for directory in dirs:
        if spec.model_source == "local" and directory == spec.local_model_path() \
                and volume.read_manifest(directory) is None:
            log.info("%s is a user's checkpoint without our manifest: not hash-checked", directory)
            continue
        problems = volume.check_manifest(directory, deep=True)
        if problems:
            raise NonRetryableError(
                f"refusing to serve: {directory} does not match its manifest ({'; '.join(problems[:5])}); "
                "delete that directory and rerun the step that produced it")
    log.info("hash-checked %d directories against their manifests", len(dirs))


def stop_server(server: dict | None) -> bool:
    """Stop the server a start_server record describes; True if a live server was stopped."""
    if not server:
        log.info("no server record: start_server never succeeded, nothing to stop")
        return False
    try:
        return _stop(server)
    finally:
        if server.get("lease"):
            Path(server["lease"]).unlink(missing_ok=True)


def _stop(server: dict) -> bool:
    if server.get("service"):
        from llm_deploy.runners import service_runner

        stopped = service_runner(server["service"]).stop(server["service"])
        log.info("tritonserver %s; its log: %s", "stopped" if stopped else "was not running", server["log_path"])
        return stopped
    from llm_deploy.server import tritonserver

    handle = tritonserver.ServerHandle.from_record(server)
    stopped = tritonserver.stop(handle)
    log.info("tritonserver pid %d %s; its log: %s", server["pid"],
             "stopped" if stopped else "was not running", server["log_path"])
    return stopped
