"""run_step and task_outcome turn step outcomes into Airflow's: fail without retry, skip with a
reason, XCom dicts; run_step runs a registered step where the backend and runner say."""

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from llm_deploy.airflow import tasks
from llm_deploy.errors import NonRetryableError, SkipStep, StepError
from llm_deploy.records import ModelRepoRecord


@pytest.fixture
def context(monkeypatch, tmp_path):
    ctx = {"params": {"engines_root": str(tmp_path)}, "run_id": "manual__2026-11-24T00:00:00"}
    monkeypatch.setattr("airflow.sdk.get_current_context", lambda: ctx)
    return ctx


def test_records_become_small_dicts(context):
    record = ModelRepoRecord(model_repo=context["params"]["engines_root"], models=["ensemble"], decoupled=True,
                             reused=False)
    assert tasks.task_outcome(lambda: record) == {"model_repo": context["params"]["engines_root"],
                                                  "models": ["ensemble"], "decoupled": True, "reused": False}


def test_the_run_id_goes_to_the_steps_that_write_run_reports(context, monkeypatch):
    calls = []
    monkeypatch.setattr("llm_deploy.steps.serve.start_server",
                        lambda spec, repo, run_id, admin_key_for: calls.append((repo, run_id, admin_key_for)) or {"pid": 1})
    assert tasks.run_step("start_server", {"model_repo": "/r"}) == {"pid": 1}
    # and where a guarded server's admin key comes from: the connection, read by the step itself
    assert calls == [({"model_repo": "/r"}, context["run_id"], tasks.triton_admin_key)]


def test_a_server_beyond_loopback_without_its_connection_fails_the_task_saying_what_to_create(context, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_TRITON_ADMIN", raising=False)
    context["params"]["server_host"] = "192.0.2.7"
    with pytest.raises(AirflowFailException, match="no Airflow connection 'triton_admin'.*airflow connections add "
                                                   "triton_admin --conn-type generic"):
        tasks.run_step("start_server", {"model_repo": "/r"})


def test_bad_params_fail_the_task_without_retry(context):
    context["params"]["dtype"] = "fp4"
    with pytest.raises(AirflowFailException, match="dtype"):
        tasks.current_spec()


def test_bad_params_fail_a_step_before_any_work(context, monkeypatch):
    context["params"]["dtype"] = "fp4"
    ran = []
    monkeypatch.setattr("llm_deploy.steps.build_wheel.build_wheel", lambda spec: ran.append(spec))
    with pytest.raises(AirflowFailException, match="dtype"):
        tasks.run_step("build_wheel")
    assert ran == [], "no work before the params are valid"


def test_non_retryable_errors_fail_at_once(context):
    def step():
        raise NonRetryableError("port 8000 is in use")

    with pytest.raises(AirflowFailException, match="port 8000 is in use"):
        tasks.task_outcome(step)


def test_skips_carry_their_reason(context):
    def step():
        raise SkipStep("nothing to build")

    with pytest.raises(AirflowSkipException, match="nothing to build"):
        tasks.task_outcome(step)


def test_other_errors_propagate_for_a_retry(context):
    def step():
        raise StepError("flaky network")

    with pytest.raises(StepError):
        tasks.task_outcome(step)


def test_the_hub_token_is_only_read_for_hub_sources(context, monkeypatch):
    from llm_deploy.spec import DeploySpec

    monkeypatch.setenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", '{"conn_type": "huggingface", "password": "hf_canary"}')
    assert tasks.hf_token(DeploySpec(engines_root="/vol")) is None
    hub = DeploySpec(engines_root="/vol", model_source="huggingface", model_id="org/model")
    assert tasks.hf_token(hub) == "hf_canary"


def test_pipeline_steps_run_in_this_process_on_the_local_runner(context, tmp_path, tiny_llama_checkpoint):
    record = tasks.run_step("build_engine", {"checkpoint_dir": str(tiny_llama_checkpoint), "manifest_sha256": "t"})
    assert record["engine_dir"].startswith(str(tmp_path)) and not record["reused"]


def test_pipeline_steps_go_to_the_docker_runner_when_the_param_says_so(context, monkeypatch):
    context["params"].update(runner="docker", docker_image="registry.local/llm:1")
    calls = []

    def run_python_step(runner, name, spec, *inputs, **options):
        calls.append((runner.image, name, inputs, options))
        return {"built": True}

    monkeypatch.setattr("llm_deploy.steps.execute.run_python_step", run_python_step)
    assert tasks.run_step("build_engine", {"checkpoint_dir": "/x"}) == {"built": True}
    assert calls == [("registry.local/llm:1", "build_engine", ({"checkpoint_dir": "/x"},),
                      {"run_id": None, "secret_env": {}})]


def test_the_server_steps_stay_on_the_worker_with_the_docker_runner(context, monkeypatch):
    context["params"].update(runner="docker", docker_image="registry.local/llm:1")
    monkeypatch.setattr("llm_deploy.steps.execute.run_python_step", lambda *a, **k: pytest.fail("sent to docker"))
    monkeypatch.setattr("llm_deploy.steps.serve.stop_server", lambda spec, server: server is None)
    assert tasks.run_step("stop_server", None) is True


def test_a_skipped_pipeline_step_keeps_its_reason(context):
    with pytest.raises(AirflowSkipException, match="no TensorRT-LLM wheel"):
        tasks.run_step("build_wheel")
