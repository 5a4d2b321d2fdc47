"""The promotion gate's decisions, as a run meets them: nothing live yet, the same repository,
a refused candidate, and a live version that changed between the comparison and the promotion.
(The measurements and the switch themselves run on real servers in tests/e2e.)"""

from __future__ import annotations

import os

import pytest

from llm_deploy.deployment import record
from llm_deploy.deployment.record import Deployment, Version
from llm_deploy.errors import NonRetryableError, SkipStep
from llm_deploy.processes import ProcessIdentity
from llm_deploy.spec import DeploySpec
from llm_deploy.steps import promote


@pytest.fixture
def spec(tmp_path):
    return DeploySpec(engines_root=str(tmp_path))


def live_deployment(spec: DeploySpec, source_repo: str, machine: str = "") -> None:
    """A deployment record whose "supervisor" is this test process, so it counts as running."""
    me = ProcessIdentity.of(os.getpid())
    deployment = Deployment(name=spec.deployment, backend="torch", host="127.0.0.1", http_port=9000,
                            grpc_port=9001, metrics_port=9002, live=1, state="serving", machine=machine,
                            supervisor={"runner": "local", "name": "llm-deploy-supervisor", "pid": me.pid,
                                        "pgid": os.getpgid(0), "create_time": me.create_time})
    deployment.versions.append(Version(version=1, models={}, engine_dir="", engine_id="", source_repo=source_repo,
                                       run_id="run-1", promoted_unix=1.0, max_batch_size=4))
    record.write(promote.deployment_dir(spec), deployment)


def test_the_deployment_is_named_after_the_model_unless_named(spec):
    assert spec.deployment == "smollm2-135m-instruct"
    assert spec.model_copy(update={"deployment_name": "chat"}).deployment == "chat"


def test_with_nothing_live_the_candidate_goes_live_without_a_comparison(spec):
    verdict = promote.compare_with_live(spec, {"model_repo": "/vol/model_repos/a"}, "run-1")
    assert verdict.verdict == "first" and "serves no version now" in verdict.reason


def test_the_repository_the_live_version_serves_is_not_promoted_again(spec):
    live_deployment(spec, "/vol/model_repos/a")
    verdict = promote.compare_with_live(spec, {"model_repo": "/vol/model_repos/a"}, "run-2")
    assert verdict.verdict == "unchanged"
    with pytest.raises(SkipStep, match="version 1 of smollm2-135m-instruct already serves this model repository"):
        promote.promote(spec, {"model_repo": "/vol/model_repos/a"}, verdict.to_xcom(), "run-2")


def test_a_refused_candidate_is_skipped_with_the_reason_and_recorded(spec):
    live_deployment(spec, "/vol/model_repos/a")
    refused = {"verdict": "refuse", "reason": "the candidate is 40.0% slower than live version 1",
               "live_version": 1}
    with pytest.raises(SkipStep, match="not promoted: the candidate is 40.0% slower .* Version 1 keeps serving "
                                       "at http://127.0.0.1:9000"):
        promote.promote(spec, {"model_repo": "/vol/model_repos/b"}, refused, "run-2")
    last = record.read(promote.deployment_dir(spec)).history[-1]
    assert (last["action"], last["run_id"]) == ("refused", "run-2")


def test_a_deployment_served_from_another_host_is_neither_judged_nor_served_twice(spec, monkeypatch):
    # On gpu-host-a, the record's supervisor pid names nothing (or someone else): taking it for
    # "nothing live" would start a second server there.
    live_deployment(spec, "/vol/model_repos/a", machine="gpu-host-b")
    monkeypatch.setattr("llm_deploy.hosts.this_host", lambda: "gpu-host-a")
    with pytest.raises(NonRetryableError, match="served from host gpu-host-b .* this task runs on gpu-host-a"):
        promote.compare_with_live(spec, {"model_repo": "/vol/model_repos/b"}, "run-2")
    with pytest.raises(NonRetryableError, match="served from host gpu-host-b"):
        promote.stop_deployment(spec, "run-2")
    monkeypatch.setattr("llm_deploy.hosts.this_host", lambda: "gpu-host-b")
    assert promote.compare_with_live(spec, {"model_repo": "/vol/model_repos/a"}, "run-2").verdict == "unchanged"


def test_a_live_version_that_changed_since_the_comparison_stops_the_promotion(spec):
    live_deployment(spec, "/vol/model_repos/a")
    compared_with_2 = {"verdict": "promote", "reason": "", "live_version": 2}
    with pytest.raises(NonRetryableError, match="serves version 1 now, not version 2"):
        promote.promote(spec, {"model_repo": "/vol/model_repos/b"}, compared_with_2, "run-2")


@pytest.mark.parametrize(("change", "reason"), [
    ({"promote": False}, "promote=false"),
    ({"runner": "docker"}, "the twin's deployment server is a process of the worker"),
    ({"backend": "trtllm", "world_size": 2}, "world_size=2: a deployment swaps versions through one tritonserver"),
])
def test_a_run_that_does_not_promote_skips_both_steps_saying_why(spec, change, reason):
    other = spec.model_copy(update=change)
    with pytest.raises(SkipStep, match=reason):
        promote.compare_with_live(other, {"model_repo": "/x"}, "run-1")
    with pytest.raises(SkipStep, match=reason):
        promote.promote(other, {"model_repo": "/x"}, {"verdict": "first"}, "run-1")


def test_a_deployment_whose_host_is_gone_is_let_go_of_from_another_host(spec, monkeypatch):
    live_deployment(spec, "/vol/model_repos/a", machine="gpu-host-b")
    monkeypatch.setattr("llm_deploy.hosts.this_host", lambda: "gpu-host-a")
    assert promote.deployment_host(spec)["hostname"] == "gpu-host-b"  # where its tasks would wait
    with pytest.raises(NonRetryableError, match="served from host gpu-host-b, not gpu-host-c: host_gone must name"):
        promote.forget_host(spec, {"host": "gpu-host-c"}, "run-2")

    result = promote.forget_host(spec, {"host": "gpu-host-b"}, "run-2")

    assert (result.action, result.live_version) == ("host_gone", 1)
    gone = record.read(promote.deployment_dir(spec))
    assert (gone.state, gone.machine, gone.supervisor) == ("stopped", "", {})
    assert (gone.history[-1]["action"], gone.history[-1]["host"]) == ("host_gone", "gpu-host-b")
    # The next promotion starts it on whichever host runs it, and nothing is left to forget.
    assert promote.deployment_host(spec)["hostname"] == ""
    with pytest.raises(NonRetryableError, match="is stopped and served from no host: nothing to forget"):
        promote.forget_host(spec, {"host": "gpu-host-b"}, "run-3")


def test_the_host_a_task_runs_on_is_not_gone(spec, monkeypatch):
    live_deployment(spec, "/vol/model_repos/a", machine="gpu-host-b")
    monkeypatch.setattr("llm_deploy.hosts.this_host", lambda: "gpu-host-b")
    with pytest.raises(NonRetryableError, match="host gpu-host-b is up .* with host_gone left empty"):
        promote.forget_host(spec, {"host": "gpu-host-b"}, "run-2")
    assert record.read(promote.deployment_dir(spec)).state == "serving"
