"""The torch backend's "launch Triton": the real tritonserver on the twin's model repository."""

from __future__ import annotations

import logging
from pathlib import Path

from llm_deploy.records import ServerRecord
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def start_server(spec: DeploySpec, model_repo: Path, log_path: Path) -> ServerRecord:
    log.info("starting tritonserver on %s (HTTP %d, gRPC %d); server log: %s",
             spec.server_host, spec.http_port, spec.grpc_port, log_path)
    server = tritonserver.start(
        model_repo,
        host=spec.server_host,
        http_port=spec.http_port,
        grpc_port=spec.grpc_port,
        metrics_port=spec.metrics_port,
        log_path=log_path,
        timeout_s=spec.server_start_timeout_s,
    )
    log.info("tritonserver ready: pid %d, %s", server.pid, server.http_url)
    return ServerRecord(
        pid=server.pid,
        pgid=server.pgid,
        http_url=server.http_url,
        grpc_url=server.grpc_url,
        metrics_url=server.metrics_url,
        log_path=str(log_path),
        model_repo=str(model_repo),
        service=server.service.to_xcom(),
    )
