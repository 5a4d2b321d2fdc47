"""A quick start whose run fails says why on the screen, as a new user runs it (README command 1).

Each test runs scripts/quickstart.sh with its own Airflow home and the suite's engines volume
(the built-in checkpoint converted by earlier tests is reused) and reads only what it prints.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import short_retries
from tests.support.airflow_stack import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

QUICKSTART = Path(__file__).resolve().parents[2] / "scripts" / "quickstart.sh"


def quickstart(conf: str, airflow_home: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    environ.update(AIRFLOW_HOME=str(airflow_home), **env)
    return subprocess.run(["bash", str(QUICKSTART), conf], env=environ, capture_output=True, text=True,
                          timeout=540, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    """One Airflow home for the module, as a user's checkout keeps one: earlier runs stay in it."""
    return tmp_path_factory.mktemp("airflow")


def test_a_backend_this_worker_cannot_run_is_named_with_what_to_do(airflow_home):
    done = quickstart('{"backend": "trtllm"}', airflow_home)

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    shown = done.stdout.splitlines()
    assert any(line.endswith("build_wheel: FAILED: BackendNotAvailable: build_wheel: backend 'trtllm' with "
                             "runner 'local' needs a worker inside the NGC Triton TensorRT-LLM image (no "
                             "/opt/tritonserver/bin/tritonserver here), so it is not available on this worker; "
                             "use runner='docker' (each command in the release's image), run the task on a GPU "
                             "worker built from that image, or choose backend='torch'") for line in shown), shown
    assert "build_wheel failed: BackendNotAvailable: build_wheel: backend 'trtllm'" in done.stdout
    assert "the run did not succeed; full log:" in done.stdout


def test_params_the_dag_refuses_start_no_run_and_the_summary_says_why(airflow_home):
    # The same Airflow home holds the failed run of the test above: it must not be reported.
    done = quickstart('{"world_size": 0}', airflow_home)

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("no run of deploy_llm started: ParamValidationError: Invalid input for param world_size: "
            "0 is less than the minimum of 1") in done.stdout
    assert "build_wheel" not in done.stdout


def test_an_unreachable_hub_shows_each_retry_and_the_remedy(tmp_path):
    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    short_retries.install(tmp_path / "airflow")  # all three tries, without minutes between them
    done = quickstart('{"model_source": "huggingface", "model_id": "meta-llama/Llama-2-7b-hf"}',
                      tmp_path / "airflow", HF_ENDPOINT=hub)

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    shown = done.stdout
    assert "download_weights: try 1 failed: StepError: could not download meta-llama/Llama-2-7b-hf" in shown
    assert "ConnectError" in shown
    # The time of the next try, from Airflow's own retry rule on the run's task.
    assert "  Airflow retries it at " in shown and " UTC (in " in shown
    assert "download_weights: started (try 3)" in shown
    assert "download_weights failed after 3 tries: StepError: could not download" in shown
    assert "what to do: the Hugging Face Hub is not reachable from this machine: set HF_ENDPOINT" in shown
    assert "Traceback" not in shown
