"""What the quick start shows of `airflow dags test`: read from a real log of a run whose
download_weights could not reach the Hub (tests/data/dags_test/download_retried.log, recorded from
scripts/quickstart.sh '{"model_source": "huggingface", "model_id": "meta-llama/Llama-2-7b-hf"}')."""

from datetime import datetime, timezone
from io import StringIO
from pathlib import Path

from llm_deploy.dags_test_console import DagTestLog, failures, follow, hint_for, read_log

RETRIED = Path(__file__).parent / "data" / "dags_test" / "download_retried.log"
NO_HUB = "could not download meta-llama/Llama-2-7b-hf (revision 'main'): ConnectError: [Errno -2] Name or service not known"


def screen(reader: DagTestLog | None = None) -> list[str]:
    out = StringIO()
    with open(RETRIED) as log:
        follow(log, out, reader=reader or DagTestLog())
    return out.getvalue().splitlines()


def test_each_task_is_shown_starting_and_ending_with_its_outcome():
    lines = screen()
    assert "[04:32:30] find_cached_engine: started" in lines
    assert "[04:32:30] find_cached_engine: success" in lines
    assert any(line.startswith("[04:32:30] build_wheel: skipped (backend 'torch' runs on the PyTorch") for line in lines)


def test_a_failed_try_says_why_and_that_airflow_retries_it():
    lines = screen()
    assert f"[04:32:30] download_weights: try 1 failed: StepError: {NO_HUB}" in lines
    assert "[04:33:10] download_weights: started (try 2)" in lines
    assert lines.count("  Airflow retries it") == 2
    assert lines[-1] == f"[04:33:53] download_weights: FAILED: StepError: {NO_HUB}"


def test_the_retry_line_names_the_time_of_the_next_try():
    at = datetime(2026, 12, 2, 4, 33, 10, tzinfo=timezone.utc)
    lines = screen(DagTestLog(next_try_at=lambda task, try_number: at))
    assert "  Airflow retries it at 04:33:10 UTC (in 40 s)" in lines


def test_an_unreachable_hub_gets_its_remedy_once_on_screen():
    hints = [line for line in screen() if line.startswith("  hint: ")]
    assert len(hints) == 1
    assert "HF_ENDPOINT" in hints[0] and "HF_HUB_OFFLINE=1" in hints[0] and '"model_source": "local"' in hints[0]


def test_the_summary_reads_the_last_failed_try_back_from_the_log():
    (failed,) = failures(RETRIED)
    assert (failed.task_id, failed.try_number, failed.state) == ("download_weights", 3, "failed")
    assert failed.error == f"StepError: {NO_HUB}"


def test_the_fail_wrapper_is_dropped_from_the_message():
    reader = DagTestLog()
    for line in ["2026-12-02T04:30:16.555068Z [info     ] [DAG TEST] starting task_id=build_wheel map_index=-1 [x]",
                 "2026-12-02T04:30:20.811032Z [error    ] Task failed with exception     [task]",
                 "Traceback (most recent call last):",
                 '  File "tasks.py", line 116, in _task_outcome',
                 "airflow.sdk.exceptions.AirflowFailException: BackendNotAvailable: build_wheel: use runner='docker'",
                 "2026-12-02T04:30:20.837444Z [info     ] Task instance state updated [x] new_state=failed rows_affected=1",
                 "2026-12-02T04:30:20.882263Z [info     ] [DAG TEST] end task task_id=build_wheel map_index=-1 [x]"]:
        shown = reader.feed(line)
    assert shown == ["[04:30:20] build_wheel: FAILED: BackendNotAvailable: build_wheel: use runner='docker'"]


def test_only_errors_with_a_known_remedy_get_a_hint():
    assert hint_for(f"StepError: {NO_HUB}")
    assert hint_for("StepError: could not download org/m: LocalEntryNotFoundError: offline mode is enabled")
    assert not hint_for("NonRetryableError: org/m is gated: add a token to the Airflow connection huggingface_default")
    assert not hint_for("BackendNotAvailable: build_wheel: use runner='docker'")


def test_a_multi_line_message_is_kept_whole():
    reader = DagTestLog()
    for line in ["2026-12-02T05:48:16.555068Z [info     ] [DAG TEST] starting task_id=find_cached_engine map_index=-1 [x]",
                 "2026-12-02T05:48:21.811032Z [error    ] Task failed with exception     [task]",
                 "Traceback (most recent call last):",
                 '  File "tasks.py", line 30, in current_spec',
                 "airflow.sdk.exceptions.AirflowFailException: invalid deployment params:",
                 "  - params: http_port, grpc_port and metrics_port must be three different ports",
                 "2026-12-02T05:48:21.837444Z [info     ] Task instance state updated [x] new_state=failed rows_affected=1"]:
        reader.feed(line)
    assert reader.tries[0].error == ("invalid deployment params:\n"
                                     "  - params: http_port, grpc_port and metrics_port must be three different ports")


def test_params_refused_before_any_run_are_read_as_the_refusal(tmp_path):
    log = tmp_path / "dags-test.log"
    log.write_text("\n".join([
        "2026-12-02T05:47:01.100000Z [info     ] Filling up the DagBag from /work/main/dags [airflow.models.dagbag.DagBag]",
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/airflow/serialization/definitions/param.py", line 151, in _validate_one',
        '    raise ParamValidationError(f"Invalid input for param {k}: {e}") from None',
        "airflow.sdk.exceptions.ParamValidationError: Invalid input for param world_size: 0 is less than the minimum of 1",
        "",
        "Failed validating 'minimum' in schema:",
        "    {'type': 'integer', 'minimum': 1, 'maximum': 64, 'section': 'Engine'}",
    ]) + "\n")
    reader = read_log(log)
    assert reader.tries == []
    assert reader.refusal.error == "ParamValidationError: Invalid input for param world_size: 0 is less than the minimum of 1"
