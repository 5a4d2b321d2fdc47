"""Tutorial steps "launch Triton" and, for the DAG's teardown, stopping it again.

start_server is an Airflow setup task: it hash-checks every file the server will load, holds the
engine to the target it was built for (release, image, GPU type), has the backend start the
server, which returns only when Triton reports the server and every model ready (and on any
failure kills what it started), then leases the engine so that retention leaves it alone while
it is served. stop_server is the teardown: it runs even when the benchmark
failed, and releases the lease.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from llm_deploy import engine_cache, volume
from llm_deploy.backends.registry import backend_for
from llm_deploy.build_target import BuildTarget, require_same_target
from llm_deploy.errors import NonRetryableError
from llm_deploy.records import ServerRecord
from llm_deploy.server.admin_guard import KeyFor, key_for
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)


def start_server(spec: DeploySpec, repo: dict, run_id: str, *, admin_key_for: KeyFor | None = None) -> ServerRecord:
    """``admin_key_for``: where the key of a server on a non-loopback ``server_host`` comes from
    (the Airflow task: the spec's connection); it reaches the server only as a secret environment
    variable, and the returned record (XCom) does not hold it."""
    admin_key = key_for(spec.server_host, spec.triton_admin_conn_id, admin_key_for)
    model_repo = Path(repo["model_repo"])
    check_served_files(spec, model_repo)
    engine_dir = volume.served_engine_dir(model_repo)
    if engine_dir:  # none in a flow that serves the checkpoint itself
        check_build_target(spec, engine_dir)
    record = backend_for(spec).start_server(spec, model_repo, volume.run_dir(spec, run_id) / "tritonserver.log",
                                            admin_key=admin_key)
    if not engine_dir:
        return record
    service = record.service or {}
    lease = engine_cache.take_lease(engine_dir, run_id=run_id, pid=record.pid,
                                    container_id=service.get("container_id", ""))
    return replace(record, lease=str(lease))


def check_served_files(spec: DeploySpec, model_repo: Path) -> None:
    """Hash every file the server would load against its manifest: the model repository, the
    engine and the checkpoint (tokenizer). Published engines are reused across runs for weeks, so
    bit rot or a stray write on the volume must stop the start here, not produce wrong tokens."""
    repo_manifest = volume.read_manifest(model_repo) or {}
    settings = repo_manifest.get("settings", {})
    dirs = [model_repo] + [Path(settings[key]) for key in ("engine_dir", "tokenizer_dir") if settings.get(key)]
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


def check_build_target(spec: DeploySpec, engine_dir: str) -> None:
    """An engine built by another release, in another image or for another GPU type fails inside
    tritonserver with a deserialization assertion: refuse it here, naming both targets."""
    config = (volume.read_manifest(Path(engine_dir)) or {}).get("engine_config", {})
    built = BuildTarget.from_dict(config["build_target"]) if config.get("build_target") else None
    here = backend_for(spec).build_target(spec, "start_server")
    require_same_target(engine_dir, built, here)
    log.info("engine built for %s: matches this server", here.describe())


def stop_server(spec: DeploySpec, server: dict | None) -> bool:
    """Stop the server a start_server record describes; True if a live server was stopped."""
    if not server:
        log.info("no server record: start_server never succeeded, nothing to stop")
        return False
    try:
        return backend_for(spec).stop_server(server)
    finally:
        if server.get("lease"):
            Path(server["lease"]).unlink(missing_ok=True)
