"""Config matrix: one base spec, a list of overrides, one engine and one benchmark per entry.

    expand({"backend": "torch", ...}, [{"max_batch_size": 4}, {"max_batch_size": 8, "dtype": "bfloat16"}])
        -> [DeploySpec(max_batch_size=4, ...), DeploySpec(max_batch_size=8, dtype="bfloat16", ...)]

Every entry is checked before any work: a bad entry found after an hour of engine builds wastes
the hour. Two entries that would build the same engine (same engine hash) are refused too, since
the second would only benchmark the first's engine again under another label.

``serve_and_benchmark`` is what the benchmark DAG does per built engine, and
``comparison_report`` turns the per-engine benchmark reports into one table and one plot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_deploy.bench import report
from llm_deploy.errors import SkipStep
from llm_deploy.spec import DeploySpec, SpecError

log = logging.getLogger(__name__)

MAX_ENTRIES = 32  # each entry is an engine build plus a server start: more is a typo, not a sweep
# A small sweep that a 2-core CPU machine finishes in minutes (torch backend, SmolLM2).
DEFAULT_MATRIX: list[dict[str, Any]] = [{"max_batch_size": 2}, {"max_batch_size": 8}]
# The Asset the build DAG updates and the benchmark DAG is scheduled on. "x-" marks a scheme of
# our own: Airflow leaves such URIs as they are instead of looking for a provider's normalizer.
ENGINES_ASSET_NAME = "llm_engines"
ENGINES_ASSET_URI = "x-llm-deploy://engines"
EVENT_SCHEMA_VERSION = 1
# A comparison's files under runs/matrix-<run id>/ (the report view reads them by these names).
MATRIX_DIR_PREFIX = "matrix-"
COMPARISON_MD, COMPARISON_PNG, COMPARISON_JSON = "comparison.md", "comparison.png", "comparison.json"
# The DAG-level params that are not DeploySpec fields.
NOT_SPEC_PARAMS = ("matrix",)


class MatrixError(SpecError):
    """A matrix that cannot be planned; the message names each bad entry's index and param."""


def expand(base: Mapping[str, Any], matrix: Any) -> list[DeploySpec]:
    """The DeploySpec of every entry (base params updated with the entry), or one MatrixError."""
    if not isinstance(matrix, list) or not matrix:
        raise MatrixError(f"matrix: expected a non-empty list of override objects, got {matrix!r}; "
                          f'e.g. [{{"max_batch_size": 4}}, {{"max_batch_size": 8, "dtype": "bfloat16"}}]')
    if len(matrix) > MAX_ENTRIES:
        raise MatrixError(f"matrix: {len(matrix)} entries; allowed: at most {MAX_ENTRIES}")
    base = {k: v for k, v in base.items() if k not in NOT_SPEC_PARAMS}
    try:
        DeploySpec.from_params(base)
    except SpecError as exc:
        raise MatrixError(f"base params (before any matrix entry) are invalid: {exc}") from None

    problems: list[str] = []
    specs: list[DeploySpec | None] = []
    for index, entry in enumerate(matrix):
        spec, problem = _entry_spec(base, index, entry)
        specs.append(spec)
        if problem:
            problems.append(problem)

    first_with_hash: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec is None:
            continue
        earlier = first_with_hash.setdefault(spec.engine_hash, index)
        if earlier != index:
            problems.append(
                f"matrix[{earlier}] and matrix[{index}] describe the same engine {spec.engine_hash} "
                f"({_describe(matrix[earlier])} vs {_describe(matrix[index])}); each entry must change "
                f"at least one of {', '.join(sorted(DeploySpec.model_validate(base).engine_inputs()))}")
    if problems:
        raise MatrixError("invalid matrix:\n" + "\n".join(problems))
    return [spec for spec in specs if spec is not None]


def _entry_spec(base: dict[str, Any], index: int, entry: Any) -> tuple[DeploySpec | None, str | None]:
    where = f"matrix[{index}]"
    if not isinstance(entry, dict):
        return None, f"{where}: expected an object of param overrides, got {entry!r}"
    if not entry:
        return None, f"{where}: empty overrides; it would only repeat the base params"
    unknown = sorted(set(entry) - set(DeploySpec.model_fields))
    if unknown:
        return None, (f"{where}: unknown param(s) {', '.join(unknown)}; "
                      f"allowed: {', '.join(DeploySpec.model_fields)}")
    try:
        return DeploySpec.from_params({**base, **entry}), None
    except SpecError as exc:
        # describe_errors' lines ("  - param: message (got ...); allowed: ..."), each under its index.
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines()[1:]]
        return None, "\n".join(f"{where}.{line}" for line in lines)


def _describe(overrides: Mapping[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True)


def plan(base: Mapping[str, Any], matrix: Any) -> list[dict[str, Any]]:
    """One JSON-able item per entry, for dynamic task mapping: index, overrides and full params."""
    specs = expand(base, matrix)
    return [{"index": i, "overrides": dict(matrix[i]), "params": spec.model_dump(mode="json"),
             "engine_hash": spec.engine_hash} for i, spec in enumerate(specs)]


# --- the benchmark side ---------------------------------------------------------------------------


def event_extra(built: Sequence[Mapping[str, Any]], run_id: str) -> dict[str, Any]:
    """The asset event's extra: every engine a build run produced, with its overrides and params."""
    engines = sorted((dict(b) for b in built), key=lambda b: b["index"])
    return {"schema_version": EVENT_SCHEMA_VERSION, "build_run_id": run_id, "engines": engines}


def engines_from_events(extras: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The engines to benchmark from the triggering events' extras, oldest event first.

    Several build runs may finish before the benchmark DAG runs (their events are then queued
    into one run); an engine that two of them built is benchmarked once, with its newest record.
    """
    by_engine: dict[str, dict[str, Any]] = {}
    for number, extra in enumerate(extras):
        if extra.get("schema_version") != EVENT_SCHEMA_VERSION or not isinstance(extra.get("engines"), list):
            raise ValueError(f"asset event {number}: extra is not an engine list of schema "
                             f"{EVENT_SCHEMA_VERSION}: {sorted(extra)}")
        for entry in extra["engines"]:
            missing = {"index", "overrides", "params", "weights", "engine"} - set(entry)
            if missing:
                raise ValueError(f"asset event {number}: an engine entry lacks {sorted(missing)}")
            by_engine.pop(entry["engine"]["engine_id"], None)
            by_engine[entry["engine"]["engine_id"]] = dict(entry)
    return list(by_engine.values())



def build_config(spec: DeploySpec, token: str | None) -> dict[str, Any]:
    """download → wheel → engine → verify for one config, each step reusing its published output.

    A backend with no wheel to build, and an engine verified before, skip those steps.
    """
    from llm_deploy.steps.execute import execute

    weights = execute("download_weights", spec, token=token)
    with contextlib.suppress(SkipStep):
        execute("build_wheel", spec)
    engine = execute("build_engine", spec, weights)
    try:
        verified = execute("verify_engine", spec, engine, weights)
    except SkipStep:
        verified = None
    return {"weights": weights, "engine": engine, "verify": verified}


def serve_and_benchmark(spec: DeploySpec, built: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Render the engine's model repository, serve it, benchmark it, and always stop the server.

    ``built`` is one entry of the build DAG's asset event: its ``weights`` and ``engine`` records.
    """
    from llm_deploy.steps.execute import execute

    repo = execute("render_model_repo", spec, built["engine"], built["weights"])
    server = execute("start_server", spec, repo, run_id=run_id)
    try:
        summary = execute("benchmark", spec, server, run_id=run_id)
    finally:
        execute("stop_server", spec, server)
    return {"index": built["index"], "overrides": built["overrides"], "engine_id": built["engine"]["engine_id"],
            **summary}


def comparison_report(results: Sequence[Mapping[str, Any]], engines_root: str | Path, run_id: str) -> dict[str, Any]:
    """Markdown table, PNG plot and the rows as JSON, the configs side by side, under runs/matrix-<run_id>/.

    ``results``: per config, its index, overrides, engine_id and report_path (a benchmark.json).
    Returns a small summary for XCom: the paths and the best config by throughput.
    """
    if not results:
        raise ValueError("comparison_report: no benchmark results to compare")
    rows = []
    for result in sorted(results, key=lambda r: r["index"]):
        benchmark = json.loads(Path(result["report_path"]).read_text())
        problems = report.schema_errors(benchmark)
        if problems:
            raise ValueError(f"{result['report_path']} breaks benchmark report schema "
                             f"{report.REPORT_SCHEMA_VERSION}: {'; '.join(problems[:5])}")
        headline = benchmark["streaming"]
        rows.append({
            "index": result["index"],
            "overrides": dict(result["overrides"]),
            "engine_id": result["engine_id"],
            "concurrency": headline["concurrency"],
            "throughput": headline["output_token_throughput_per_s"],
            "ttft_p50_ms": report.figure(headline, "time_to_first_token_ms", "p50"),
            "itl_p50_ms": report.figure(headline, "inter_token_latency_ms", "p50"),
            "errors": sum(e["errors"] for levels in benchmark["sweep"].values() for e in levels),
            "report_path": str(result["report_path"]),
        })

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:120] or "run"
    out_dir = Path(engines_root) / "runs" / f"{MATRIX_DIR_PREFIX}{safe}"
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / COMPARISON_MD
    table_path.write_text(_markdown(rows, run_id))
    plot_path = _plot(rows, out_dir / COMPARISON_PNG)
    # The rows as data too, for the report view (the Markdown is for people reading files).
    (out_dir / COMPARISON_JSON).write_text(json.dumps({"run_id": run_id, "rows": rows}, indent=2))
    measured = [r for r in rows if r["throughput"] is not None]
    best = max(measured, key=lambda r: r["throughput"]) if measured else None
    log.info("matrix comparison of %d configs: %s, %s", len(rows), table_path, plot_path)
    return {
        "configs": len(rows),
        "table_path": str(table_path),
        "plot_path": str(plot_path),
        "best_throughput": None if best is None else {
            "index": best["index"], "overrides": best["overrides"], "engine_id": best["engine_id"],
            "output_token_throughput_per_s": best["throughput"]},
        "errors": sum(r["errors"] for r in rows),
    }


def _markdown(rows: list[dict[str, Any]], run_id: str) -> str:
    lines = [f"# Config matrix {run_id}", "",
             "Headline level of each config (first target, highest concurrency).", "",
             "| # | config overrides | engine id | concurrency | output tok/s | TTFT p50 ms | ITL p50 ms | errors |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        overrides = ", ".join(f"{k}={v}" for k, v in sorted(r["overrides"].items()))
        lines.append(f"| {r['index']} | {overrides} | `{r['engine_id']}` | {r['concurrency']} | "
                     f"{_fmt(r['throughput'])} | {_fmt(r['ttft_p50_ms'])} | {_fmt(r['itl_p50_ms'])} | {r['errors']} |")
    lines += ["", "Reports:", ""] + [f"- {r['index']}: `{r['report_path']}`" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    labels = [f"{r['index']}: " + ", ".join(f"{k}={v}" for k, v in sorted(r["overrides"].items())) for r in rows]
    positions = list(range(len(rows)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * len(rows) + 2.5))
    for ax, key, title in ((left, "throughput", "output tokens/s"), (right, "ttft_p50_ms", "TTFT p50 (ms)")):
        ax.barh(positions, [r[key] or 0.0 for r in rows])
        ax.set_yticks(positions, labels if ax is left else [str(r["index"]) for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(title)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
