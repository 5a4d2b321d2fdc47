"""Which versions a deployment keeps, and which one a rollback returns to: the version that was
live before the live one, even after a rollback and a new promotion."""

from __future__ import annotations

from llm_deploy.deployment import lifecycle, record
from llm_deploy.deployment.record import Deployment, Version


def version(number: int) -> Version:
    return Version(version=number, models={"tensorrt_llm": f"tensorrt_llm_v{number}"}, engine_dir="", engine_id="",
                   source_repo=f"/vol/model_repos/{number}", run_id=f"run-{number}", promoted_unix=float(number),
                   max_batch_size=4)


def deployment_with(tmp_path, *, live: int, previous: int, numbers: list[int]):
    directory = record.deployment_dir(tmp_path, "chat")
    record.write(directory, Deployment(name="chat", backend="torch", host="127.0.0.1", http_port=9000,
                                       grpc_port=9001, metrics_port=9002, live=live, previous=previous,
                                       versions=[version(n) for n in numbers]))
    return directory


def test_after_a_rollback_and_a_new_promotion_rollback_returns_to_the_version_rolled_back_to(tmp_path):
    # 1 promoted, 2 promoted, rolled back to 1, then 3 promoted: 3 is live, 1 was live before it.
    directory = deployment_with(tmp_path, live=3, previous=1, numbers=[1, 2, 3])

    kept = lifecycle._retain(directory)

    assert [v.version for v in kept.versions] == [1, 3]  # 2, the version rolled away from, goes
    assert lifecycle._previous(kept).version == 1


def test_without_a_recorded_previous_version_the_newest_other_is_kept(tmp_path):
    directory = deployment_with(tmp_path, live=1, previous=0, numbers=[1, 2, 3])

    kept = lifecycle._retain(directory)

    assert [v.version for v in kept.versions] == [1, 3]
    assert lifecycle._previous(kept).version == 3
