"""The config matrix: every entry checked up front, one spec per engine, one comparison report."""

from __future__ import annotations

import json

import pytest

from llm_deploy import matrix
from llm_deploy.bench import report
from llm_deploy.bench.metrics import RequestTiming, summarize
from llm_deploy.spec import DeploySpec, SpecError


@pytest.fixture
def base(tmp_path) -> dict:
    return {"engines_root": str(tmp_path), "benchmark_concurrency_levels": [1, 2], "matrix": [{"ignored": 1}]}


def test_each_entry_overrides_the_base_params(base):
    specs = matrix.expand(base, [{"max_batch_size": 4}, {"max_batch_size": 8, "dtype": "bfloat16"}])
    assert [(s.max_batch_size, s.dtype) for s in specs] == [(4, "float32"), (8, "bfloat16")]
    assert all(s.engines_root == base["engines_root"] and s.benchmark_concurrency_levels == [1, 2] for s in specs)
    assert specs[0].engine_hash != specs[1].engine_hash


def test_plan_gives_json_items_that_rebuild_the_same_specs(base):
    items = matrix.plan(base, [{"max_batch_size": 4}, {"world_size": 2}])
    json.dumps(items)  # XCom and mapping need plain JSON
    assert [i["index"] for i in items] == [0, 1]
    assert items[1]["overrides"] == {"world_size": 2}
    rebuilt = DeploySpec.from_params(items[1]["params"])
    assert rebuilt.world_size == 2 and rebuilt.engine_hash == items[1]["engine_hash"]


def test_an_invalid_value_names_the_entry_the_param_and_what_is_allowed(base):
    with pytest.raises(matrix.MatrixError) as err:
        matrix.expand(base, [{"max_batch_size": 4}, {"dtype": "int3"}, {"max_batch_size": 0}])
    message = str(err.value)
    assert "matrix[0]" not in message
    assert "matrix[1].dtype:" in message and "float32, float16, bfloat16" in message and "'int3'" in message
    assert "matrix[2].max_batch_size:" in message and "1..4096" in message
    assert isinstance(err.value, SpecError)  # tasks fail it without retry, like any bad param


def test_unknown_keys_are_refused_with_the_allowed_names(base):
    with pytest.raises(matrix.MatrixError, match=r"matrix\[1\]: unknown param\(s\) max_batch, turbo; allowed: .*max_batch_size"):
        matrix.expand(base, [{"dtype": "float16"}, {"max_batch": 4, "turbo": True}])


def test_cross_field_rules_apply_to_the_merged_params(base):
    with pytest.raises(matrix.MatrixError, match=r"matrix\[0\]\.params: benchmark_max_tokens must not exceed max_output_len"):
        matrix.expand(base, [{"max_output_len": 8}])


def test_two_entries_with_the_same_engine_are_duplicates_naming_both_indexes(base):
    # A benchmark-only difference builds the same engine: it is still a duplicate.
    entries = [{"max_batch_size": 4}, {"dtype": "float16"}, {"max_batch_size": 4, "benchmark_requests": 3}]
    with pytest.raises(matrix.MatrixError, match=r"matrix\[0\] and matrix\[2\] describe the same engine"):
        matrix.expand(base, entries)


def test_an_entry_equal_to_the_base_twice_is_a_duplicate(base):
    with pytest.raises(matrix.MatrixError, match=r"matrix\[0\] and matrix\[1\]"):
        matrix.expand(base, [{"dtype": "float32"}, {"dtype": "float32"}])


@pytest.mark.parametrize("bad, expected", [
    ([], "non-empty list"),
    ({"max_batch_size": 4}, "non-empty list"),
    (None, "non-empty list"),
    ([{}], r"matrix\[0\]: empty overrides"),
    ([{"dtype": "float16"}, "bfloat16"], r"matrix\[1\]: expected an object"),
    ([{"max_batch_size": n} for n in range(1, 40)], "at most 32"),
])
def test_malformed_matrices_are_refused(base, bad, expected):
    with pytest.raises(matrix.MatrixError, match=expected):
        matrix.expand(base, bad)


def test_invalid_base_params_are_reported_as_such(base):
    with pytest.raises(matrix.MatrixError, match=r"(?s)base params .* http_port"):
        matrix.expand({**base, "http_port": 80}, [{"dtype": "float16"}])


def test_the_default_matrix_is_valid_for_the_default_params(tmp_path):
    specs = matrix.expand({"engines_root": str(tmp_path)}, matrix.DEFAULT_MATRIX)
    assert len(specs) == 2 and {s.backend for s in specs} == {"torch"}


# --- asset events ---------------------------------------------------------------------------------


def built_entry(index: int, engine_id: str, overrides: dict) -> dict:
    return {"index": index, "overrides": overrides, "params": {}, "engine_hash": "h",
            "weights": {"checkpoint_dir": "/x"}, "engine": {"engine_id": engine_id}, "verify": None}


def test_event_extra_carries_every_engine_in_order():
    extra = matrix.event_extra([built_entry(1, "b", {"dtype": "float16"}), built_entry(0, "a", {})], "run1")
    assert extra["build_run_id"] == "run1" and [e["index"] for e in extra["engines"]] == [0, 1]
    assert json.loads(json.dumps(extra)) == extra


def test_engines_from_several_events_are_deduplicated_newest_record_wins():
    first = matrix.event_extra([built_entry(0, "a", {"x": 1}), built_entry(1, "b", {})], "run1")
    second = matrix.event_extra([built_entry(0, "a", {"x": 2})], "run2")
    engines = matrix.engines_from_events([first, second])
    assert [(e["engine"]["engine_id"], e["overrides"]) for e in engines] == [("b", {}), ("a", {"x": 2})]


def test_an_event_without_engines_is_refused():
    with pytest.raises(ValueError, match="asset event 0: extra is not an engine list"):
        matrix.engines_from_events([{"something": "else"}])
    broken = matrix.event_extra([built_entry(0, "a", {})], "r")
    del broken["engines"][0]["weights"]
    with pytest.raises(ValueError, match=r"lacks \['weights'\]"):
        matrix.engines_from_events([broken])


# --- the comparison report ------------------------------------------------------------------------


def synthetic_report(tok_s: float, ttft_ms: float, errors: int = 0) -> dict:
    """A schema-valid benchmark.json whose headline level has the given throughput and TTFT."""
    ttft = ttft_ms / 1000
    timings = [RequestTiming(sent=0.0, response_times=[ttft + 0.01 * i for i in range(5)]) for _ in range(4)]
    entry = {"concurrency": 4, **summarize(timings, wall_s=1.0)}
    entry["output_token_throughput_per_s"] = tok_s
    entry["errors"] = errors
    load = {"prompt": "p", "max_tokens": 5, "requests_per_level": 4, "concurrency_levels": [4]}
    load["fingerprint"] = report.load_fingerprint(load)
    benchmark = {"schema_version": report.REPORT_SCHEMA_VERSION, "run_id": "r", "created_unix": 1.0,
                 "engine_hash": "h", "spec": {}, "host": {}, "load": load, "sweep": {"grpc_ensemble": [entry]},
                 "streaming": entry, "sample_output": "x", "generate": {}, "baseline": None, "regression": None,
                 "artifacts": {}}
    assert report.schema_errors(benchmark) == []
    return benchmark


def write_results(tmp_path, reports: list[dict]) -> list[dict]:
    results = []
    for index, benchmark in enumerate(reports):
        path = tmp_path / f"bench{index}.json"
        path.write_text(json.dumps(benchmark))
        results.append({"index": index, "overrides": {"max_batch_size": 4 * (index + 1)},
                        "engine_id": f"engine{index}", "report_path": str(path)})
    return results


def test_comparison_report_writes_a_table_and_a_plot(tmp_path):
    results = write_results(tmp_path, [synthetic_report(120.0, 40.0), synthetic_report(310.5, 65.0, errors=1)])
    summary = matrix.comparison_report(results, tmp_path / "engines", "scheduled__2026-11-25T04:00:00+00:00")

    out_dir = tmp_path / "engines" / "runs" / "matrix-scheduled__2026-11-25T04_00_00_00_00"
    assert summary["table_path"] == str(out_dir / "comparison.md")
    table = (out_dir / "comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert rows == ["| 0 | max_batch_size=4 | `engine0` | 4 | 120.0 | 40.0 | 10.0 | 0 |",
                    "| 1 | max_batch_size=8 | `engine1` | 4 | 310.5 | 65.0 | 10.0 | 1 |"]
    png = (out_dir / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert summary["configs"] == 2 and summary["errors"] == 1
    assert summary["best_throughput"]["index"] == 1 and summary["best_throughput"]["engine_id"] == "engine1"
    json.dumps(summary)


def test_comparison_report_refuses_a_report_that_breaks_the_schema(tmp_path):
    broken = synthetic_report(1.0, 1.0)
    del broken["streaming"]
    with pytest.raises(ValueError, match="streaming: missing"):
        matrix.comparison_report(write_results(tmp_path, [broken]), tmp_path, "r")


def test_comparison_report_needs_results(tmp_path):
    with pytest.raises(ValueError, match="no benchmark results"):
        matrix.comparison_report([], tmp_path, "r")
