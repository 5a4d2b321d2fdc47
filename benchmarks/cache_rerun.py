"""A rerun of the same spec with the verified-engine cache vs the cold run, through the real steps.

On a fresh engines volume, for the built-in SmolLM2 on the torch backend:

- cold: download_weights (convert the packaged checkpoint) → build_engine → verify_engine (which
  marks the engine verified);
- reused, uncached: the same three steps again, as a rerun went before the cache (checkpoint and
  engine reused, verify re-run);
- cached: what a rerun does now: find_cached (checkpoint manifest, engine manifest deep-hashed,
  marker checked) and nothing else, the three steps are skipped.

cached ÷ cold is issue 6's goal (≤ 0.10). The whole DAG cold vs cached, with Airflow's own cost,
is benchmarks/pipeline_overhead.py.

    .venv/bin/python benchmarks/cache_rerun.py [--repeats 3]

Writes benchmarks/results/cache_rerun.json and prints it. Figures from a shared 2-core machine
are noisy: compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "plugins"))
RESULT = REPO_ROOT / "benchmarks" / "results" / "cache_rerun.json"
GOAL_CACHED_OVER_COLD = 0.10
PARAMS = {"max_input_len": 128, "max_output_len": 32, "benchmark_max_tokens": 16}

from llm_deploy import engine_cache  # noqa: E402
from llm_deploy.spec import DeploySpec  # noqa: E402
from llm_deploy.steps.build_engine import build_engine  # noqa: E402
from llm_deploy.steps.download_weights import download_weights  # noqa: E402
from llm_deploy.steps.verify_engine import verify_engine  # noqa: E402


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, round(time.perf_counter() - start, 3)


def three_steps(spec: DeploySpec) -> dict:
    weights, t_download = timed(lambda: download_weights(spec, None).to_xcom())
    engine, t_build = timed(lambda: build_engine(spec, weights).to_xcom())
    _, t_verify = timed(lambda: verify_engine(spec, engine, weights))
    return {"download_weights_s": t_download, "build_engine_s": t_build, "verify_engine_s": t_verify,
            "total_s": round(t_download + t_build + t_verify, 3),
            "reused": {"weights": weights["reused"], "engine": engine["reused"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="uncached and cached reruns measured")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cache-rerun-"))
    try:
        spec = DeploySpec(engines_root=str(root), **PARAMS)
        assert engine_cache.find_cached(spec, None) is None, "a fresh volume must miss"
        cold = three_steps(spec)
        uncached = [three_steps(spec) for _ in range(args.repeats)]
        cached = []
        for _ in range(args.repeats):
            hit, seconds = timed(lambda: engine_cache.find_cached(spec, None))
            if hit is None:
                raise SystemExit("no cache hit after a verified build: the cache is broken")
            cached.append(seconds)
        engine_bytes = sum(p.stat().st_size for p in Path(hit["engine"]["engine_dir"]).rglob("*") if p.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cached_s = statistics.median(cached)
    uncached_s = statistics.median(run["total_s"] for run in uncached)
    result = {
        "what": "download_weights → build_engine → verify_engine of one spec: cold, rerun without the "
                "cache (reuse, verify again), rerun with the verified-engine cache (find_cached only)",
        "command": "python benchmarks/cache_rerun.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "shared 2-core dev machine, other jobs running: noisy"},
        "spec": {"model": spec.model_id, "backend": spec.backend, "dtype": spec.dtype, **PARAMS},
        "engine_bytes": engine_bytes,
        "cold": cold,
        "rerun_uncached": uncached,
        "rerun_cached_s": cached,
        "median_uncached_s": round(uncached_s, 3),
        "median_cached_s": round(cached_s, 3),
        "cached_over_cold": round(cached_s / cold["total_s"], 4),
        "uncached_over_cold": round(uncached_s / cold["total_s"], 4),
        "goal_cached_over_cold": GOAL_CACHED_OVER_COLD,
        "goal_met": cached_s / cold["total_s"] <= GOAL_CACHED_OVER_COLD,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
