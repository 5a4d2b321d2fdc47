"""run_step turns step outcomes into Airflow's: fail without retry, skip with a reason, XCom dicts."""

from dataclasses import dataclass

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from llm_deploy.airflow import tasks
from llm_deploy.errors import NonRetryableError, SkipStep, StepError


@pytest.fixture
def context(monkeypatch, tmp_path):
    ctx = {"params": {"engines_root": str(tmp_path)}, "run_id": "manual__2026-11-24T00:00:00"}
    monkeypatch.setattr("airflow.sdk.get_current_context", lambda: ctx)
    return ctx


@dataclass
class Record:
    path: str

    def to_xcom(self):
        return {"path": self.path}


def test_records_become_small_dicts(context):
    assert tasks.run_step(lambda spec: Record(spec.engines_root)) == {"path": context["params"]["engines_root"]}


def test_the_run_id_is_passed_when_asked(context):
    assert tasks.run_step(lambda spec, run_id: run_id, pass_run_id=True) == context["run_id"]


def test_bad_params_fail_the_task_without_retry(context):
    context["params"]["dtype"] = "fp4"
    ran = []
    with pytest.raises(AirflowFailException, match="dtype"):
        tasks.run_step(lambda spec: ran.append(spec))
    assert ran == [], "no work before the params are valid"


def test_non_retryable_errors_fail_at_once(context):
    def step(spec):
        raise NonRetryableError("port 8000 is in use")

    with pytest.raises(AirflowFailException, match="port 8000 is in use"):
        tasks.run_step(step)


def test_skips_carry_their_reason(context):
    def step(spec):
        raise SkipStep("nothing to build")

    with pytest.raises(AirflowSkipException, match="nothing to build"):
        tasks.run_step(step)


def test_other_errors_propagate_for_a_retry(context):
    def step(spec):
        raise StepError("flaky network")

    with pytest.raises(StepError):
        tasks.run_step(step)


def test_the_hub_token_is_only_read_for_hub_sources(context, monkeypatch):
    from llm_deploy.spec import DeploySpec

    monkeypatch.setenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", '{"conn_type": "huggingface", "password": "hf_canary"}')
    assert tasks.hf_token(DeploySpec(engines_root="/vol")) is None
    hub = DeploySpec(engines_root="/vol", model_source="huggingface", model_id="org/model")
    assert tasks.hf_token(hub) == "hf_canary"


def test_pipeline_steps_run_in_this_process_on_the_local_runner(context, tmp_path, tiny_llama_checkpoint):
    record = tasks.run_pipeline_step("build_engine", {"checkpoint_dir": str(tiny_llama_checkpoint), "manifest_sha256": "t"})
    assert record["engine_dir"].startswith(str(tmp_path)) and not record["reused"]


def test_pipeline_steps_go_to_the_docker_runner_when_the_param_says_so(context, monkeypatch):
    context["params"].update(runner="docker", docker_image="registry.local/llm:1")
    calls = []

    def run_python_step(runner, name, spec, *inputs, **options):
        calls.append((runner.image, name, inputs, options))
        return {"built": True}

    monkeypatch.setattr("llm_deploy.runners.run_python_step", run_python_step)
    assert tasks.run_pipeline_step("build_engine", {"checkpoint_dir": "/x"}) == {"built": True}
    assert calls == [("registry.local/llm:1", "build_engine", ({"checkpoint_dir": "/x"},),
                      {"run_id": None, "secret_env": {}})]


def test_a_skipped_pipeline_step_keeps_its_reason(context):
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="no TensorRT-LLM wheel"):
        tasks.run_pipeline_step("build_wheel")
