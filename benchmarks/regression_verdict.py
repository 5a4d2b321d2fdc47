"""Does the regression verdict cry wolf? Four benchmark runs of one server, judged against the first.

The quick start's load (SmolLM2-135M-Instruct on the torch twin, concurrency 1, 4 and 16, 20 s a
level, the HF baseline on), run by the benchmark step itself, four times on a fresh server each:

    quiet        the reference run
    quiet_again  the same, again: an identical server on the same machine
    loaded       the same server while a neighbour spins on one of the machine's cores: the
                 machine is slower, the server is not
    slowed       a slower server on a quiet machine: every decode step delayed on purpose
                 (LLM_DEPLOY_TWIN_STEP_DELAY_MS, the fault the twin's batcher offers)

Each of the last three is compared with ``quiet`` twice: as the figures are (what the check did
before it knew the machine's speed) and as ``report.compare`` judges them now. The four reports
are kept as tests/data/regression_pairs/*.json: tests/bench/test_regression_verdict.py replays
them. About 7 minutes on an idle 2-core machine.

    python benchmarks/regression_verdict.py [--step-delay-ms 20]   # writes benchmarks/results/regression_verdict.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from _served import REPO_ROOT, bench_spec, deployed, write_result

PAIRS = REPO_ROOT / "tests" / "data" / "regression_pairs"
THRESHOLD_PCT = 10.0


@contextlib.contextmanager
def neighbour(cores: int):
    """``cores`` processes that spin until the block ends."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run(name: str, spec, *, step_delay_ms: int = 0, hog_cores: int = 0) -> dict:
    from llm_deploy.backends.torch.inflight import STEP_DELAY_ENV
    from llm_deploy.steps.benchmark import benchmark

    os.environ[STEP_DELAY_ENV] = str(step_delay_ms) if step_delay_ms else ""
    run_id = f"regression_verdict-{name}-{int(time.time())}"
    with deployed(spec, run_id) as server, (neighbour(hog_cores) if hog_cores else contextlib.nullcontext()):
        summary = benchmark(spec, server, run_id).to_xcom()
    os.environ.pop(STEP_DELAY_ENV, None)
    report = json.loads(Path(summary["report_path"]).read_text())
    report["regression"] = None  # judged below, against this script's reference run
    return report


def as_measured(report: dict) -> dict:
    """The report without its yardsticks: what the check saw before it knew the machine's speed."""
    bare = copy.deepcopy(report)
    bare["baseline"], bare["machine"] = None, None
    return bare


def verdicts(current: dict, reference: dict) -> dict:
    from llm_deploy.bench.report import compare

    raw = compare(as_measured(current), as_measured(reference), THRESHOLD_PCT)
    judged = compare(current, reference, THRESHOLD_PCT)
    return {"raw_flagged": [f"c={r['concurrency']} {r['metric']} {r['worse_pct']}%" for r in raw["regressions"]],
            "flagged": [f"c={r['concurrency']} {r['metric']} {r['worse_pct']}% (raw {r['raw_worse_pct']}%)"
                        for r in judged["regressions"]],
            "machine": judged["machine"], "allowed_pct": judged["allowed_pct"], "compared": judged["compared"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-delay-ms", type=int, default=20)
    parser.add_argument("--hog-cores", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    spec = bench_spec(benchmark_concurrency_levels=[1, 4, 16], benchmark_duration_s=20)
    load_before = os.getloadavg()[0]
    reports = {"quiet": run("quiet", spec), "quiet_again": run("quiet_again", spec),
               "loaded": run("loaded", spec, hog_cores=args.hog_cores),
               "slowed": run("slowed", spec, step_delay_ms=args.step_delay_ms)}
    PAIRS.mkdir(parents=True, exist_ok=True)
    for name, report in reports.items():
        (PAIRS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")

    def headline(report: dict) -> dict:
        return {"served_c16_tok_s": report["streaming"]["output_token_throughput_per_s"],
                "hf_static_batch_tok_s": {n: r["output_token_throughput_per_s"]
                                          for n, r in report["baseline"]["runs"].items()},
                "machine_gflops": report["machine"]["gflops"], "machine_drift_pct": report["machine"]["drift_pct"]}

    write_result("regression_verdict", {
        "what": "regressions flagged against the quiet run, figures as measured vs judged at the machine's speed",
        "command": "python benchmarks/regression_verdict.py " + " ".join(sys.argv[1:]),
        "model": spec.model_id, "cpus": os.cpu_count(), "threshold_pct": THRESHOLD_PCT,
        "step_delay_ms": args.step_delay_ms, "hog_cores": args.hog_cores,
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "runs": {name: headline(report) for name, report in reports.items()},
        "against_quiet": {name: verdicts(reports[name], reports["quiet"])
                          for name in ("quiet_again", "loaded", "slowed")},
        "recorded": str(PAIRS.relative_to(REPO_ROOT)),
    })


if __name__ == "__main__":
    main()
