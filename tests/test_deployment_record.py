"""A deployment's record: written whole or not at all, changed under a lock, one operation at a time."""

from __future__ import annotations

import pytest

from llm_deploy.deployment import record
from llm_deploy.deployment.record import Deployment, DeploymentBusy, Version
from llm_deploy.errors import NonRetryableError


def new(tmp_path) -> tuple:
    directory = record.deployment_dir(tmp_path, "smollm2")
    deployment = Deployment(name="smollm2", backend="torch", host="127.0.0.1", http_port=9000, grpc_port=9001,
                            metrics_port=9002)
    record.write(directory, deployment)
    return directory, deployment


def version(number: int) -> Version:
    return Version(version=number, models={"tensorrt_llm": f"tensorrt_llm_v{number}"}, engine_dir="", engine_id="",
                   source_repo="/vol/model_repos/x", run_id=f"run-{number}", promoted_unix=float(number),
                   max_batch_size=4)


def test_a_change_made_under_the_lock_is_written_back(tmp_path):
    directory, _ = new(tmp_path)
    with record.updating(directory) as deployment:
        deployment.versions.append(version(1))
        deployment.live = 1
        deployment.event("promoted", version=1)

    again = record.read(directory)
    assert again.live_version() == version(1)
    assert again.history[-1]["action"] == "promoted" and again.http_url == "http://127.0.0.1:9000"
    assert list(directory.glob(".*.tmp")) == []  # replaced atomically, no scratch left


def test_a_failed_change_leaves_the_record_as_it_was(tmp_path):
    directory, _ = new(tmp_path)
    with pytest.raises(RuntimeError), record.updating(directory) as deployment:
        deployment.live = 7
        raise RuntimeError("the switch failed")
    assert record.read(directory).live == 0


def test_a_second_operation_on_one_deployment_is_refused_at_once(tmp_path):
    directory, _ = new(tmp_path)
    with record.operation(directory, "promote"):
        with pytest.raises(DeploymentBusy, match="rollback: another promotion, rollback or stop of smollm2"):
            with record.operation(directory, "rollback"):
                pass
    with record.operation(directory, "rollback"):  # free again once the first is done
        pass


def test_the_history_keeps_the_latest_events(tmp_path):
    _, deployment = new(tmp_path)
    for n in range(record.HISTORY_KEPT + 5):
        deployment.event("server_exited", n=n)
    assert len(deployment.history) == record.HISTORY_KEPT and deployment.history[-1]["n"] == record.HISTORY_KEPT + 4


def test_an_unknown_version_is_named_with_those_kept(tmp_path):
    _, deployment = new(tmp_path)
    deployment.versions = [version(2), version(3)]
    with pytest.raises(NonRetryableError, match="has no version 1 \\(kept: 2, 3\\)"):
        deployment.version(1)


@pytest.mark.parametrize("name", ["", "Upper", "../x", "a/b", "-dash", "x" * 64])
def test_a_name_that_is_not_a_directory_name_is_refused(tmp_path, name):
    with pytest.raises(NonRetryableError, match="deployment name"):
        record.deployment_dir(tmp_path, name)


def test_a_corrupt_record_says_what_to_do(tmp_path):
    directory, _ = new(tmp_path)
    (directory / record.RECORD).write_text("{not json")
    with pytest.raises(NonRetryableError, match="is not a deployment record .*move it aside"):
        record.read(directory)
