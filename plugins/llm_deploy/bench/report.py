"""The benchmark report: versioned JSON, PNG plots, a Markdown summary, and the regression check.

The benchmark step measures; this module turns the measurements into a report and writes it.

Schema (REPORT_SCHEMA_VERSION 3), one JSON object:
  schema_version, run_id, created_unix, engine_hash, spec, host
  load:       prompt, max_tokens, input/output length mean and spread, seed, warmup_requests,
              requests_per_level, duration_s, concurrency_levels, targets, fingerprint
  sweep:      {target: [{"concurrency": N, **summarize(...)}, ...]}  one entry per level
              (bench/metrics.py: genai-perf's metric names and meanings; version 3 made
              inter_token_latency per request over re-tokenized output and added
              inter_chunk_latency, so version-2 figures are not compared with it)
  streaming:  the headline level (first target, highest concurrency), same block as a sweep entry
  sample_output, generate: {endpoint, text_output, latency_s, error}
  baseline:   HF transformers generate figures (torch backend) or null
  regression: {previous_report, threshold_pct, allowed_pct, machine: {basis, factor, previous, current,
              noise_pct}, verdict (regressed | no regression | inconclusive), reason, regressions: [..],
              compared: N} or null (``compare``)
  artifacts:  {summary_md, plots: [...]}
Optional (reports of the benchmark step carry them; readers must not require them):
  served:     {model_repo, engine_dir ("" when the checkpoint is served as is), log_path}
  airflow:    {dag_id, run_id, task_id} of the task that measured, or null outside Airflow
  machine:    the fixed workload's speed before and after the sweep (bench/machine_speed.py)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 3
REPORT_NAME = "benchmark.json"
SUMMARY_NAME = "benchmark.md"

# How far the machine's speed may move between two runs for their figures to be judged at all.
MACHINE_TOLERANCE = 0.25

# Headline figures compared between runs, and which direction is better.
COMPARED = (
    ("output_token_throughput_per_s", None, "higher"),
    ("request_throughput_per_s", None, "higher"),
    ("time_to_first_token_ms", "p50", "lower"),
    ("inter_token_latency_ms", "p50", "lower"),
    ("request_latency_ms", "p50", "lower"),
)


TOP_LEVEL = {"schema_version": int, "run_id": str, "created_unix": (int, float), "engine_hash": str,
             "spec": dict, "host": dict, "load": dict, "sweep": dict, "streaming": dict, "sample_output": str,
             "generate": dict, "baseline": (dict, type(None)), "regression": (dict, type(None)),
             "artifacts": dict}
LEVEL = {"concurrency": int, "requests": int, "completed": int, "errors": int, "error_messages": list,
         "wall_s": (int, float), "output_tokens": int, "responses": int,
         "output_token_throughput_per_s": (int, float, type(None)),
         "request_throughput_per_s": (int, float, type(None))}
# Distributions: a block of STATS, or null where nothing was measurable (no ITL for /generate).
DISTRIBUTIONS = ("time_to_first_token_ms", "inter_token_latency_ms", "inter_chunk_latency_ms",
                 "request_latency_ms", "output_sequence_length")
STATS = ("avg", "min", "max", "p50", "p90", "p99")


def schema_errors(report: dict) -> list[str]:
    """What in ``report`` does not follow the schema above; empty when it does."""
    errors = [f"{key}: missing" for key in TOP_LEVEL if key not in report]
    errors += [f"{key}: {type(report[key]).__name__}, expected {_names(kind)}"
               for key, kind in TOP_LEVEL.items() if key in report and not isinstance(report[key], kind)]
    if report.get("schema_version") != REPORT_SCHEMA_VERSION:
        errors.append(f"schema_version: {report.get('schema_version')!r}, expected {REPORT_SCHEMA_VERSION}")
    for target, levels in (report.get("sweep") or {}).items():
        for i, entry in enumerate(levels):
            where = f"sweep.{target}[{i}]"
            errors += [f"{where}.{key}: missing or {_names(kind)} expected" for key, kind in LEVEL.items()
                       if not isinstance(entry.get(key, ...), kind)]
            for name in DISTRIBUTIONS:
                block = entry.get(name, ...)
                if block is None:
                    continue
                if not isinstance(block, dict) or set(block) != set(STATS):
                    errors.append(f"{where}.{name}: expected null or {{{', '.join(STATS)}}}")
    return errors


def _names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def load_fingerprint(load: dict) -> str:
    """Hash of everything that shapes the offered load: only runs with equal fingerprints compare."""
    canonical = json.dumps({k: v for k, v in load.items() if k != "fingerprint"}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def new_report(*, run_id: str, spec: dict, engine_hash: str, load: dict, sweep: dict, generate: dict,
               baseline: dict | None) -> dict:
    """A report of this schema, led by ``headline(sweep)``; regression and artifacts come later."""
    streaming = headline(sweep)
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run_id": run_id,
        "created_unix": round(time.time(), 3),
        "spec": spec,
        "engine_hash": engine_hash,
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "load": load,
        "sweep": sweep,
        "streaming": streaming,
        "sample_output": streaming["sample_output"],
        "generate": generate,
        "baseline": baseline,
        "regression": None,
    }


def headline(sweep: dict) -> dict:
    """The level a report leads with: the first target's highest concurrency."""
    return max(next(iter(sweep.values())), key=lambda e: e["concurrency"])


def failed_requests(report: dict) -> tuple[int, int, list[str]]:
    """(failed, sent, their distinct error messages) over the sweep and the one /generate call."""
    levels = [entry for target_levels in report["sweep"].values() for entry in target_levels]
    generate_error = report["generate"]["error"]
    failed = sum(e["errors"] for e in levels) + (generate_error is not None)
    messages = sorted({m for e in levels for m in e["error_messages"]})
    messages += [f"/generate: {generate_error}"] if generate_error else []
    sent = sum(e["requests"] for e in levels) + 1
    return failed, sent, messages


def against_previous_run(report: dict, runs_dir: Path, *, current: Path, threshold_pct: float) -> dict | None:
    """The regression block: ``report`` compared with the newest other report of the same load, if any."""
    previous = previous_report(runs_dir, current=current, fingerprint=report["load"]["fingerprint"])
    if previous is None:
        return None
    return {"previous_report": str(previous), **compare(report, json.loads(previous.read_text()), threshold_pct)}


def add_artifacts(report: dict, out_dir: Path) -> None:
    """Plot ``report`` into ``out_dir`` and name the plots and the Markdown summary in it."""
    try:
        plots = plot(report, out_dir)
    except ImportError:  # matplotlib missing on a slim worker: the JSON and Markdown still stand
        log.warning("matplotlib is not installed; no plots")
        plots = []
    report["artifacts"] = {"summary_md": str(out_dir / SUMMARY_NAME), "plots": [str(p) for p in plots]}


def write_report(report: dict, out_dir: Path) -> None:
    """The Markdown summary, then the JSON report, into ``out_dir``."""
    (out_dir / SUMMARY_NAME).write_text(markdown_summary(report))
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))


def previous_report(runs_dir: Path, *, current: Path, fingerprint: str) -> Path | None:
    """Newest other report under the same engine's runs/ with the same load fingerprint."""
    candidates = []
    for path in runs_dir.glob(f"*/{REPORT_NAME}"):
        if path.resolve() == current.resolve():
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if report.get("schema_version") == REPORT_SCHEMA_VERSION and report.get("load", {}).get("fingerprint") == fingerprint:
            candidates.append((report.get("created_unix", 0), path))
    return max(candidates)[1] if candidates else None


def figure(entry: dict, name: str, percentile: str | None) -> float | None:
    value = entry.get(name)
    if percentile is not None:
        value = value.get(percentile) if value else None
    return value


def machine_change(current: dict, previous: dict) -> dict:
    """How much faster the machine itself was in ``current`` than in ``previous`` (``factor``,
    1.0 = the same), and on what that is judged (``basis``), best yardstick first:

    - the same runs' HF generate() baseline (same checkpoint, same machine, minutes apart from
      the served figures): its largest static batch present in both;
    - the fixed workload of bench/machine_speed.py, timed in both runs;
    - nothing (factor 1.0): the figures are compared as they are.

    ``noise_pct``: the larger of the two runs' drift of that fixed workload, i.e. how much the
    machine's speed moved within a run; a change smaller than that is not the server's.
    """
    noise = max((r.get("machine") or {}).get("drift_pct", 0.0) for r in (current, previous))
    now_runs = ((current.get("baseline") or {}).get("runs") or {})
    then_runs = ((previous.get("baseline") or {}).get("runs") or {})
    static = sorted((n for n in now_runs if n.startswith("static_batch_") and n in then_runs),
                    key=lambda n: int(n.rsplit("_", 1)[1]))
    if static:
        name = static[-1]
        now, then = now_runs[name]["output_token_throughput_per_s"], then_runs[name]["output_token_throughput_per_s"]
        if now and then:
            return {"basis": f"HF generate {name} (output tok/s)", "previous": then, "current": now,
                    "factor": round(now / then, 4), "noise_pct": noise}
    now_machine, then_machine = current.get("machine") or {}, previous.get("machine") or {}
    if now_machine.get("gflops") and then_machine.get("gflops") \
            and now_machine.get("workload") == then_machine.get("workload"):
        return {"basis": f"fixed workload: {now_machine['workload']} (GFLOP/s)", "previous": then_machine["gflops"],
                "current": now_machine["gflops"], "factor": round(now_machine["gflops"] / then_machine["gflops"], 4),
                "noise_pct": noise}
    return {"basis": "none (neither run measured the machine): figures compared as they are",
            "previous": None, "current": None, "factor": 1.0, "noise_pct": noise}


def compare(current: dict, previous: dict, threshold_pct: float) -> dict:
    """Every headline figure of every (target, concurrency) present in both that got worse by more
    than ``threshold_pct`` percent plus the machine's noise, once the machine's own change is
    divided out (``machine_change``): on a machine 14% slower, a throughput 14% lower and
    latencies 16% higher are what an unchanged server gives, and are not flagged. A machine that
    moved by more than MACHINE_TOLERANCE makes the verdict "inconclusive", with nothing flagged."""
    machine = machine_change(current, previous)
    factor, allowed = machine["factor"], threshold_pct + machine["noise_pct"]
    if not 1 - MACHINE_TOLERANCE <= factor <= 1 / (1 - MACHINE_TOLERANCE):
        # A server's figures do not follow the machine's speed in proportion (a busy neighbour
        # slows a 2-thread matrix product far more than a server of several processes): past
        # this, dividing it out would hide a real regression or invent one.
        return {"threshold_pct": threshold_pct, "allowed_pct": round(allowed, 2), "machine": machine,
                "compared": 0, "regressions": [], "verdict": "inconclusive",
                "reason": f"the machine ran at {factor:.2f}x its speed of the previous run ({machine['basis']}), "
                          f"beyond the {MACHINE_TOLERANCE:.0%} within which figures are judged: rerun both "
                          "on a machine as quiet as the other"}
    regressions, compared = [], 0
    for target, levels in current["sweep"].items():
        before = {e["concurrency"]: e for e in previous.get("sweep", {}).get(target, [])}
        for entry in levels:
            old = before.get(entry["concurrency"])
            if old is None:
                continue
            for name, percentile, better in COMPARED:
                now, then = figure(entry, name, percentile), figure(old, name, percentile)
                if not now or not then:
                    continue
                compared += 1
                # What an unchanged server would show on the machine as it is now.
                expected = then * factor if better == "higher" else then / factor
                worse_pct = _worse_pct(now, expected, better)
                if worse_pct > allowed:
                    raw_pct = _worse_pct(now, then, better)
                    regressions.append({
                        "target": target, "concurrency": entry["concurrency"],
                        "metric": name + (f".{percentile}" if percentile else ""),
                        "previous": then, "current": now, "expected": round(expected, 3),
                        "worse_pct": round(worse_pct, 2), "raw_worse_pct": round(raw_pct, 2),
                    })
    return {"threshold_pct": threshold_pct, "allowed_pct": round(allowed, 2), "machine": machine,
            "compared": compared, "regressions": regressions,
            "verdict": "regressed" if regressions else "no regression", "reason": ""}


def _worse_pct(now: float, reference: float, better: str) -> float:
    """How much worse ``now`` is than ``reference``, in percent of it (negative: better)."""
    worse = reference - now if better == "higher" else now - reference
    return worse / reference * 100


def markdown_summary(report: dict) -> str:
    lines = [f"# Benchmark {report['run_id']}", "",
             f"engine `{report['engine_hash']}`, load `{report['load']['fingerprint']}`, "
             f"{report['load']['requests_per_level']} requests per level, max_tokens "
             f"{report['load']['max_tokens']}", ""]
    for target, levels in report["sweep"].items():
        lines += [f"## {target}", "",
                  "| concurrency | ok/sent | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in levels:
            lines.append("| {} | {}/{} | {} | {} | {} | {} | {} | {} |".format(
                e["concurrency"], e["completed"], e["requests"], _fmt(e["output_token_throughput_per_s"]),
                _fmt(e["request_throughput_per_s"]), *(_fmt(figure(e, m, p)) for m, p in (
                    ("time_to_first_token_ms", "p50"), ("time_to_first_token_ms", "p99"),
                    ("inter_token_latency_ms", "p50"), ("inter_token_latency_ms", "p99")))))
        lines.append("")
    if report.get("baseline"):
        lines += ["## HF transformers generate (same checkpoint, same machine)", ""]
        served = report["streaming"]["output_token_throughput_per_s"]
        for name, block in report["baseline"]["runs"].items():
            hf = block["output_token_throughput_per_s"]
            ratio = f" (served at c={report['streaming']['concurrency']}: {served / hf:.1f}x)" if served and hf else ""
            lines.append(f"- {name}: {_fmt(hf)} output tok/s{ratio}")
        lines.append("")
    regression = report.get("regression")
    if regression:
        lines += ["## Against the previous run", "", f"previous: `{regression['previous_report']}`, "
                  f"{regression['compared']} figures compared, threshold {regression['threshold_pct']}%", ""]
        machine = regression.get("machine")
        if machine:
            lines += [f"machine now / then: {machine['factor']:.2f} by {machine['basis']} "
                      f"({machine['previous']} -> {machine['current']}); figures judged against what an unchanged "
                      f"server gives at that speed, allowing {regression['allowed_pct']}% "
                      f"(threshold + the machine's noise of {machine['noise_pct']}%)", ""]
        if regression.get("verdict") == "inconclusive":
            lines.append(f"- INCONCLUSIVE: {regression['reason']}")
        for r in regression["regressions"]:
            expected = f", {r['expected']} expected at this machine's speed" if "expected" in r else ""
            lines.append(f"- REGRESSION {r['target']} c={r['concurrency']} {r['metric']}: "
                         f"{r['previous']} -> {r['current']}{expected} ({r['worse_pct']}% worse)")
        if regression.get("verdict", "no regression") == "no regression":
            lines.append("- no regression")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, out_dir: Path) -> list[Path]:
    """throughput vs concurrency, and TTFT / ITL percentiles vs concurrency, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    paths = []
    panels = (
        ("throughput", "output tokens/s", [("output_token_throughput_per_s", None)]),
        ("ttft", "time to first token (ms)", [("time_to_first_token_ms", p) for p in ("p50", "p90", "p99")]),
        ("itl", "inter-token latency (ms)", [("inter_token_latency_ms", p) for p in ("p50", "p90", "p99")]),
    )
    for name, ylabel, series in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for target, levels in report["sweep"].items():
            xs = [e["concurrency"] for e in levels]
            for metric, percentile in series:
                ys = [figure(e, metric, percentile) for e in levels]
                label = target + (f" {percentile}" if percentile else "")
                ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"benchmark_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
