"""The torch backend's "launch Triton": the real tritonserver on the twin's model repository."""

from __future__ import annotations

import logging
from pathlib import Path

from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.records import ServerRecord
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def start_server(spec: DeploySpec, model_repo: Path, log_path: Path) -> ServerRecord:
    log.info("starting tritonserver on %s (HTTP %d, gRPC %d); server log: %s",
             spec.server_host, spec.http_port, spec.grpc_port, log_path)
    try:
        handle = tritonserver.start(
            model_repo,
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
        model_repo=str(model_repo),
    )


def stop_server(server: dict) -> bool:
    handle = tritonserver.ServerHandle.from_record(server)
    stopped = tritonserver.stop(handle)
    log.info("tritonserver pid %d %s; its log: %s", server["pid"],
             "stopped" if stopped else "was not running", server["log_path"])
    return stopped
