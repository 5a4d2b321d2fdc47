"""The report: regression comparison, previous-run lookup, Markdown and plots."""

from __future__ import annotations

import json

from llm_deploy.bench import report
from llm_deploy.bench.metrics import RequestTiming, summarize


def level(concurrency: int, tok_s: float, ttft_ms: float) -> dict:
    """A sweep entry as summarize() makes it, from requests with a chosen TTFT and 10 ms ITL."""
    ttft = ttft_ms / 1000
    timings = [RequestTiming(sent=0.0, response_times=[ttft + 0.01 * i for i in range(5)])]
    entry = {"concurrency": concurrency, **summarize(timings, wall_s=1.0)}
    entry["output_token_throughput_per_s"] = tok_s
    return entry


def make_report(levels: list[dict], run_id: str = "r1", created: float = 1.0) -> dict:
    load = {"prompt": "p", "max_tokens": 5, "requests_per_level": 1, "concurrency_levels": [1, 4]}
    load["fingerprint"] = report.load_fingerprint(load)
    return {"schema_version": report.REPORT_SCHEMA_VERSION, "run_id": run_id, "created_unix": created,
            "engine_hash": "abc", "spec": {}, "host": {}, "load": load, "sweep": {"grpc_ensemble": levels},
            "streaming": levels[-1], "sample_output": "x", "generate": {}, "baseline": None,
            "regression": None, "artifacts": {}}


def test_a_report_as_summarize_makes_it_follows_the_schema():
    assert report.schema_errors(make_report([level(1, 100.0, 50.0), level(4, 300.0, 60.0)])) == []


def test_schema_names_what_is_missing_or_mistyped():
    benchmark = make_report([level(1, 100.0, 50.0)])
    del benchmark["load"]
    benchmark["schema_version"] = 2
    entry = benchmark["sweep"]["grpc_ensemble"][0]
    entry["errors"] = "0"
    entry["time_to_first_token_ms"] = {"p50": 1.0}
    entry["inter_token_latency_ms"] = None  # allowed: nothing measurable, e.g. /generate
    assert report.schema_errors(benchmark) == [
        "load: missing", "schema_version: 2, expected 3",
        "sweep.grpc_ensemble[0].errors: missing or int expected",
        "sweep.grpc_ensemble[0].time_to_first_token_ms: expected null or {avg, min, max, p50, p90, p99}"]


def test_slower_throughput_and_later_first_token_are_regressions():
    before = make_report([level(1, 100.0, 50.0), level(4, 300.0, 60.0)])
    after = make_report([level(1, 95.0, 50.0), level(4, 240.0, 90.0)], run_id="r2")
    result = report.compare(after, before, threshold_pct=10.0)
    flagged = {(r["concurrency"], r["metric"]): r["worse_pct"] for r in result["regressions"]}
    # c=1 lost 5% (under the threshold); c=4 lost 20% tok/s and TTFT went 60 -> 90 ms (+50%)
    assert flagged == {(4, "output_token_throughput_per_s"): 20.0, (4, "time_to_first_token_ms.p50"): 50.0,
                       (4, "request_latency_ms.p50"): 30.0}
    assert result["compared"] == 10


def test_improvements_are_not_regressions():
    before = make_report([level(1, 100.0, 50.0)])
    after = make_report([level(1, 200.0, 10.0)])
    assert report.compare(after, before, threshold_pct=0.0)["regressions"] == []


def test_previous_report_is_the_newest_with_the_same_load(tmp_path):
    current = make_report([level(1, 1.0, 1.0)], created=30.0)
    older, newer, other_load = (make_report([level(1, 1.0, 1.0)], run_id=r, created=c)
                                for r, c in (("a", 10.0), ("b", 20.0), ("c", 25.0)))
    other_load["load"]["fingerprint"] = "different"
    for name, benchmark in (("a", older), ("b", newer), ("c", other_load), ("now", current)):
        (tmp_path / name).mkdir()
        (tmp_path / name / report.REPORT_NAME).write_text(json.dumps(benchmark))
    found = report.previous_report(tmp_path, current=tmp_path / "now" / report.REPORT_NAME,
                                   fingerprint=current["load"]["fingerprint"])
    assert found == tmp_path / "b" / report.REPORT_NAME


def test_markdown_lists_levels_and_regressions():
    benchmark = make_report([level(1, 100.0, 50.0), level(4, 300.0, 60.0)])
    benchmark["regression"] = {"previous_report": "/x/benchmark.json", "threshold_pct": 10.0, "compared": 10,
                               "regressions": [{"target": "grpc_ensemble", "concurrency": 4, "worse_pct": 20.0,
                                                "metric": "output_token_throughput_per_s",
                                                "previous": 300.0, "current": 240.0}]}
    text = report.markdown_summary(benchmark)
    assert "| 4 | 1/1 | 300.0 |" in text
    assert "REGRESSION grpc_ensemble c=4 output_token_throughput_per_s: 300.0 -> 240.0 (20.0% worse)" in text


def test_markdown_puts_the_hf_baseline_beside_the_served_figure():
    benchmark = make_report([level(1, 100.0, 50.0), level(16, 300.0, 60.0)])
    benchmark["baseline"] = {"runs": {"batch_1": {"output_token_throughput_per_s": 20.0},
                                      "static_batch_16": {"output_token_throughput_per_s": 150.0}}}
    text = report.markdown_summary(benchmark)
    assert "- batch_1: 20.0 output tok/s (served at c=16: 15.0x)" in text
    assert "- static_batch_16: 150.0 output tok/s (served at c=16: 2.0x)" in text


def test_plots_are_pngs(tmp_path):
    paths = report.plot(make_report([level(1, 100.0, 50.0), level(4, 300.0, 60.0)]), tmp_path)
    assert [p.name for p in paths] == ["benchmark_throughput.png", "benchmark_ttft.png", "benchmark_itl.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_a_new_report_leads_with_the_first_target_highest_level_and_is_written_beside_its_plots(tmp_path):
    first, second = [level(1, 100.0, 50.0), level(4, 300.0, 60.0)], [level(4, 900.0, 10.0)]
    first[-1]["sample_output"] = "hello"
    load = make_report(first)["load"]
    benchmark = report.new_report(run_id="r1", spec={}, engine_hash="abc", load=load,
                                  sweep={"grpc_ensemble": first, "http_generate": second},
                                  generate={"text_output": "x", "error": None}, baseline=None)
    assert benchmark["streaming"] == first[-1] and benchmark["sample_output"] == "hello"
    report.add_artifacts(benchmark, tmp_path)
    assert report.schema_errors(benchmark) == []
    report.write_report(benchmark, tmp_path)
    assert json.loads((tmp_path / report.REPORT_NAME).read_text()) == benchmark
    assert benchmark["artifacts"]["summary_md"] == str(tmp_path / report.SUMMARY_NAME)
    assert len(benchmark["artifacts"]["plots"]) == 3


def test_failed_requests_count_the_sweep_and_the_generate_call():
    failing = level(1, 1.0, 1.0)
    failing.update(errors=2, requests=5, error_messages=["b: refused", "a: reset"])
    benchmark = make_report([failing, level(4, 1.0, 1.0)])
    benchmark["generate"] = {"error": "URLError: gone"}
    sent = 5 + benchmark["sweep"]["grpc_ensemble"][1]["requests"] + 1
    assert report.failed_requests(benchmark) == (3, sent, ["a: reset", "b: refused", "/generate: URLError: gone"])


def test_a_run_without_an_earlier_one_of_its_load_has_no_regression_block(tmp_path):
    current = make_report([level(1, 100.0, 50.0)])
    assert report.against_previous_run(current, tmp_path, current=tmp_path / "now" / report.REPORT_NAME,
                                       threshold_pct=10.0) is None
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / report.REPORT_NAME).write_text(json.dumps(make_report([level(1, 200.0, 50.0)])))
    block = report.against_previous_run(current, tmp_path, current=tmp_path / "now" / report.REPORT_NAME,
                                        threshold_pct=10.0)
    assert block["previous_report"] == str(tmp_path / "before" / report.REPORT_NAME)
    assert [r["metric"] for r in block["regressions"]] == ["output_token_throughput_per_s"]


# --- judged at the machine's speed ----------------------------------------------------------------


def with_yardsticks(benchmark: dict, hf_tok_s: float | None = None, gflops: float | None = None,
                    drift_pct: float = 0.0) -> dict:
    if hf_tok_s is not None:
        benchmark["baseline"] = {"runs": {"batch_1": {"output_token_throughput_per_s": hf_tok_s / 4},
                                          "static_batch_8": {"output_token_throughput_per_s": hf_tok_s}}}
    if gflops is not None:
        benchmark["machine"] = {"workload": "24 float32 384x384 matrix products on 2 threads", "gflops": gflops,
                                "drift_pct": drift_pct}
    return benchmark


def test_a_server_as_fast_as_before_on_a_slower_machine_is_not_a_regression():
    # The case: the HF baseline fell 14% (127.0 -> 109.2 tok/s) and the served figures with it.
    before = with_yardsticks(make_report([level(16, 100.0, 50.0)]), hf_tok_s=127.0)
    after = with_yardsticks(make_report([level(16, 86.0, 58.0)], run_id="r2"), hf_tok_s=109.2)
    assert report.compare(as_bare(after), as_bare(before), threshold_pct=10.0)["regressions"], \
        "as measured, 14% less throughput and 16% later first tokens look like regressions"

    result = report.compare(after, before, threshold_pct=10.0)
    assert result["regressions"] == []
    assert result["machine"]["basis"] == "HF generate static_batch_8 (output tok/s)"
    assert result["machine"]["factor"] == round(109.2 / 127.0, 4)


def test_a_slower_server_on_an_unchanged_machine_still_is():
    before = with_yardsticks(make_report([level(16, 100.0, 50.0)]), hf_tok_s=127.0)
    after = with_yardsticks(make_report([level(16, 80.0, 50.0)], run_id="r2"), hf_tok_s=126.0)
    (flagged,) = report.compare(after, before, threshold_pct=10.0)["regressions"]
    assert flagged["metric"] == "output_token_throughput_per_s"
    assert flagged["expected"] == 99.21 and flagged["raw_worse_pct"] == 20.0  # 100 x (126 / 127)


def test_without_a_baseline_the_fixed_workload_measures_the_machine_and_its_drift_widens_the_threshold():
    before = with_yardsticks(make_report([level(16, 100.0, 50.0)]), gflops=40.0, drift_pct=2.0)
    after = with_yardsticks(make_report([level(16, 70.0, 50.0)], run_id="r2"), gflops=30.0, drift_pct=8.0)
    result = report.compare(after, before, threshold_pct=10.0)
    assert result["machine"]["factor"] == 0.75 and result["machine"]["basis"].startswith("fixed workload")
    assert result["allowed_pct"] == 18.0, "the threshold plus the larger drift of the two runs"
    assert result["regressions"] == [], "70 tok/s on a machine at 0.75x is 6.7% under the 75 expected"


def test_a_machine_that_moved_past_the_tolerance_gives_no_verdict_either_way():
    before = with_yardsticks(make_report([level(16, 100.0, 50.0)]), hf_tok_s=120.0)
    after = with_yardsticks(make_report([level(16, 40.0, 50.0)], run_id="r2"), hf_tok_s=60.0)
    result = report.compare(after, before, threshold_pct=10.0)
    assert (result["verdict"], result["regressions"], result["compared"]) == ("inconclusive", [], 0)
    assert "0.50x" in result["reason"]
    summary = report.markdown_summary({**after, "regression": {"previous_report": "r1/benchmark.json", **result}})
    assert "INCONCLUSIVE: the machine ran at 0.50x" in summary and "no regression" not in summary


def test_with_no_yardstick_in_either_run_the_figures_are_compared_as_they_are():
    result = report.compare(make_report([level(1, 80.0, 50.0)]), make_report([level(1, 100.0, 50.0)]), 10.0)
    assert result["machine"]["factor"] == 1.0 and result["machine"]["basis"].startswith("none")
    assert [r["metric"] for r in result["regressions"]] == ["output_token_throughput_per_s"]


def as_bare(benchmark: dict) -> dict:
    return {**benchmark, "baseline": None, "machine": None}
