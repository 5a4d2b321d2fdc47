"""The torch backend's "launch Triton": the real tritonserver on the twin's model repository."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from llm_deploy import volume
from llm_deploy.backends.torch import ranks
from llm_deploy.backends.torch.build_engine import ENGINE_CONFIG
from llm_deploy.records import ServerRecord
from llm_deploy.server import tritonserver
from llm_deploy.server.admin_guard import AdminKey, RESTRICTED_APIS
from llm_deploy.server.mpirun import MpiLaunch
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def start_server(spec: DeploySpec, model_repo: Path, log_path: Path, admin_key: AdminKey | None = None) -> ServerRecord:
    log.info("starting tritonserver on %s (HTTP %d, gRPC %d); server log: %s",
             spec.server_host, spec.http_port, spec.grpc_port, log_path)
    if admin_key:
        log.info("guarded: %s need the header %r (the key of Airflow connection %r)",
                 ", ".join(RESTRICTED_APIS), admin_key.header, spec.triton_admin_conn_id)
    server = tritonserver.start(
        model_repo,
        ranks=_ranks(model_repo),
        host=spec.server_host,
        http_port=spec.http_port,
        grpc_port=spec.grpc_port,
        metrics_port=spec.metrics_port,
        log_path=log_path,
        timeout_s=spec.server_start_timeout_s,
        admin_key=admin_key,
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


def _ranks(model_repo: Path) -> MpiLaunch | None:
    """The follower ranks of the engine the repository serves, if it is split over several."""
    engine_dir = Path(volume.served_engine_dir(model_repo))
    try:
        config = json.loads((engine_dir / ENGINE_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    world_size = int(config.get("tensor_parallel", 1))
    if world_size == 1:
        return None
    address = ranks.free_address()
    max_seq_len = int(config["max_input_len"]) + int(config["max_output_len"])
    followers = [ranks.follower_argv(engine_dir, rank, world_size, address,
                                     max_batch_size=int(config["max_batch_size"]), max_seq_len=max_seq_len,
                                     device="auto")
                 for rank in range(1, world_size)]
    log.info("%s is split over %d ranks: rank 0 in tritonserver, ranks 1-%d beside it under mpirun, meeting at %s",
             engine_dir, world_size, world_size - 1, address)
    return MpiLaunch(followers=followers, env={ranks.ADDRESS_ENV: address})
