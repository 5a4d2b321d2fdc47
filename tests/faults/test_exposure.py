"""Exposure: what each step's container may write, read off the Mount objects the docker runner
builds for it (host directories, path for path), and where the server listens by default.

A step may write only the one directory it publishes into; everything it reads (the weights for
build_engine, the engine for verify_engine and benchmark, the model repository for benchmark) is
on a read-only mount. No daemon is needed: these are the exact mounts DockerOperator would get.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from llm_deploy import volume
from llm_deploy.runners.docker_runner import DockerRunner
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.through_runner import python_step_command
from tests.support.engines import engine_dir_here


@pytest.fixture
def spec(tmp_path) -> DeploySpec:
    return DeploySpec(engines_root=str(tmp_path))


def records(spec: DeploySpec) -> dict[str, dict]:
    checkpoint = {"checkpoint_dir": str(volume.checkpoint_dir(spec)), "manifest_sha256": "0" * 64}
    engine = {"engine_dir": str(engine_dir_here(spec, checkpoint["manifest_sha256"]))}
    repo = {"model_repo": str(volume.model_repo_dir(spec).with_name("inflight_batcher_llm-0123456789ab"))}
    server = {**repo, "http_url": "http://127.0.0.1:8000", "grpc_url": "127.0.0.1:8001", "log_path": ""}
    return {"checkpoint": checkpoint, "engine": engine, "repo": repo, "server": server}


def access(mounts: list, path: str) -> str:
    """'rw', 'ro' or 'unmounted' for ``path`` inside the container: the deepest mount decides."""
    covering = [m for m in mounts if PurePosixPath(path).is_relative_to(m["Target"])]
    if not covering:
        return "unmounted"
    deepest = max(covering, key=lambda m: len(m["Target"]))
    return "ro" if deepest["ReadOnly"] else "rw"


# step -> (the step's inputs, the paths it only reads, the one directory it may write)
STEPS = {
    "download_weights": ((), (), lambda s, r: str(volume.checkpoint_dir(s).parent)),
    "build_wheel": ((), (), None),
    "build_engine": (("checkpoint",), ("checkpoint_dir",), lambda s, r: str(PurePosixPath(r["engine"]["engine_dir"]).parent)),
    # The verified marker goes into the engine's dir, and retention prunes the model's engines.
    "verify_engine": (("engine", "checkpoint"), ("checkpoint_dir",),
                      lambda s, r: str(PurePosixPath(r["engine"]["engine_dir"]).parent)),
    "render_model_repo": (("engine", "checkpoint"), ("engine_dir", "checkpoint_dir"),
                          lambda s, r: str(volume.model_repo_dir(s).parent)),
    "benchmark": (("server",), ("model_repo",), lambda s, r: str(s.root / "runs" / s.engine_hash)),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_writes_only_where_it_publishes(spec, step):
    inputs, reads, writes = STEPS[step]
    recs = records(spec)
    command = python_step_command(step, spec, *(recs[name] for name in inputs),
                                  run_id="run-1" if step == "benchmark" else None)

    mounts = DockerRunner("image", engines_root=spec.engines_root).mounts(command)

    writable = sorted(m["Target"] for m in mounts if not m["ReadOnly"])
    assert writable == ([writes(spec, recs)] if writes else [])
    assert access(mounts, spec.engines_root) == "ro"
    every_input = {key: value for rec in recs.values() for key, value in rec.items()}
    for key in reads:
        assert access(mounts, every_input[key]) == "ro", key
    assert access(mounts, str(engine_dir_here(spec, "0" * 64))) == (
        "rw" if step in ("build_engine", "verify_engine") else "ro")
    assert access(mounts, str(volume.checkpoint_dir(spec))) == ("rw" if step == "download_weights" else "ro")
    assert all(m["Type"] == "bind" and m["Source"] == m["Target"] for m in mounts)


def test_the_server_binds_loopback_unless_told_otherwise(spec):
    from llm_deploy.server.tritonserver import TritonPaths, server_command

    argv = server_command(TritonPaths(PurePosixPath("/opt/triton")), PurePosixPath("/repo"),
                          host=spec.server_host, http_port=spec.http_port, grpc_port=spec.grpc_port,
                          metrics_port=spec.metrics_port)

    assert spec.server_host == "127.0.0.1"
    for service in ("http", "grpc", "metrics"):
        assert f"--{service}-address=127.0.0.1" in argv


def test_beyond_loopback_every_admin_api_triton_has_is_restricted_and_only_inference_health_metadata_open():
    """Our split against the real tritonserver's own list: an API group a later Triton adds must
    be placed on one side or the other before it can be served unguarded."""
    import re
    import subprocess

    from llm_deploy.server import tritonserver
    from llm_deploy.server.admin_guard import OPEN_APIS, RESTRICTED_APIS, guarded_argv

    paths, env = tritonserver.prepare()
    usage = subprocess.run([str(paths.binary), "--help"], env=env, capture_output=True, text=True).stderr  # usage goes to stderr
    for flag in ("http-restricted-api", "grpc-restricted-protocol"):
        allowed = re.search(rf"--{flag} .*?Allowed \w+: ([a-z,\s-]+)", usage, re.S).group(1)
        assert sorted(RESTRICTED_APIS + OPEN_APIS) == sorted(name.strip() for name in allowed.split(",")), flag

    argv = guarded_argv(["tritonserver", "--http-address=192.0.2.1"], "triton-admin-key")
    assert (argv[:2], argv[3:]) == (["/bin/sh", "-c"], ["llm-deploy-guard", "tritonserver", "--http-address=192.0.2.1"])
    assert f'"--http-restricted-api={",".join(RESTRICTED_APIS)}:triton-admin-key=${{' in argv[2]
    assert f'"--grpc-restricted-protocol={",".join(RESTRICTED_APIS)}:triton-admin-key=${{' in argv[2]
