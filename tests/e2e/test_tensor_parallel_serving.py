"""world_size 2 for real on CPU: SmolLM2 split over two ranks (gloo), served as upstream's
launch_triton_server.py --world_size serves it: one mpirun, rank 0 in tritonserver, rank 1
beside it following every step.

The steps are the DAG's own (download_weights, build_engine, verify_engine, render_model_repo,
start_server, benchmark, stop_server) on a spec with world_size=2. The last test kills rank 1 in
the middle of a benchmark: the benchmark fails naming the rank, and stop_server leaves no process
of the server's session.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from llm_deploy import processes
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec
from llm_deploy.steps.benchmark import benchmark
from llm_deploy.steps.build_engine import build_engine
from llm_deploy.steps.download_weights import download_weights
from llm_deploy.steps.render_model_repo import render_model_repo
from llm_deploy.steps.serve import start_server, stop_server
from llm_deploy.steps.verify_engine import verify_engine
from tests.e2e.test_serving import _ensemble_inputs, _stream, _text
from tests.support.apt import apt_install, can_install

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def mpirun() -> str:
    if shutil.which("mpirun") is None:
        if not can_install():
            pytest.skip("Open MPI's mpirun is missing and installing openmpi-bin needs root and apt-get")
        apt_install("openmpi-bin")
    return shutil.which("mpirun")


@pytest.fixture(scope="module")
def spec(tmp_path_factory, free_ports_factory) -> DeploySpec:
    root = os.environ.get("LLM_DEPLOY_ENGINES_ROOT") or str(tmp_path_factory.mktemp("engines"))
    # keep_engines=0: this engine's verification must not retire the suite's others on a shared volume.
    return DeploySpec(engines_root=root, world_size=2, max_batch_size=4, max_input_len=128, max_output_len=64,
                      keep_engines=0, benchmark_concurrency_levels=[4], benchmark_requests=48,
                      benchmark_max_tokens=32, benchmark_warmup_requests=1, benchmark_hf_baseline=False,
                      **free_ports_factory())


@pytest.fixture(scope="module")
def built(spec) -> dict:
    weights = download_weights(spec, None).to_xcom()
    engine = build_engine(spec, weights).to_xcom()
    verified = verify_engine(spec, engine, weights).to_xcom()  # token for token against HF greedy
    return {"weights": weights, "engine": engine, "verified": verified}


@pytest.fixture(scope="module")
def server(mpirun, spec, built) -> dict:
    repo = render_model_repo(spec, built["engine"], built["weights"]).to_xcom()
    record = start_server(spec, repo, run_id="tensor-parallel-e2e").to_xcom()
    yield record
    stop_server(spec, record)
    assert processes.group_members(record["pgid"]) == [], "no rank may outlive stop_server"


def session(server: dict) -> dict[str, int]:
    """The server's processes by what they are: mpirun, tritonserver, the follower rank(s)."""
    found = {}
    for pid in processes.group_members(server["pgid"]):
        argv = " ".join(psutil.Process(pid).cmdline())
        for name in ("mpirun", "tritonserver", "rank_follower"):
            if name in argv.split()[0] or f"llm_deploy.backends.torch.{name}" in argv:
                found[name] = pid
    return found


def completed_requests(server: dict) -> float:
    """Requests the tensorrt_llm model has answered, from Triton's own metrics."""
    with urllib.request.urlopen(server["metrics_url"], timeout=10) as response:
        metrics = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith('nv_inference_request_success{model="tensorrt_llm"'))


def test_the_engine_is_built_as_one_shard_per_rank_and_verified_against_transformers(built):
    engine_dir = Path(built["engine"]["engine_dir"])
    assert sorted(p.name for p in engine_dir.glob("rank*")) == ["rank0", "rank1"]
    assert not list(engine_dir.glob("*.safetensors")), "only the ranks' shards, no whole copy"
    assert built["verified"]["tokens"] > 0


def test_both_ranks_run_under_one_mpirun_and_the_ensemble_streams_the_single_rank_tokens(server, built):
    from transformers import AutoTokenizer

    from llm_deploy.backends.torch.verify_engine import reference_greedy

    assert set(session(server)) == {"mpirun", "tritonserver", "rank_follower"}
    checkpoint = Path(built["weights"]["checkpoint_dir"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt = tokenizer(TUTORIAL_PROMPT)["input_ids"]
    # The model whole, in one process: what world_size 1 serves (its own verify holds it to this).
    expected = reference_greedy(checkpoint, "float32", prompt, MAX_TOKENS, tokenizer.eos_token_id)

    [pieces] = _stream(server["grpc_url"], "ensemble",
                       {"tp2": _ensemble_inputs(TUTORIAL_PROMPT, MAX_TOKENS)}, timeout=120).values()

    assert "".join(_text(piece) for piece in pieces) == tokenizer.decode(expected, skip_special_tokens=True)


def test_killing_rank_1_mid_benchmark_fails_it_naming_the_rank(server, spec):
    outcome: list[BaseException | None] = []

    def measure() -> None:
        try:
            benchmark(spec, server, run_id="tensor-parallel-e2e-killed")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    runner = threading.Thread(target=measure)
    runner.start()
    served_before = completed_requests(server)
    deadline = time.monotonic() + 300
    while completed_requests(server) < served_before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # until the benchmark's requests are being served: then, mid-benchmark
    follower = session(server)["rank_follower"]
    psutil.Process(follower).kill()
    runner.join(timeout=600)

    (error,) = outcome
    assert error is not None, "the benchmark cannot succeed once a rank is gone"
    print(f"\nthe benchmark, rank 1 killed (pid {follower}): {type(error).__name__}: {error}")
    assert "rank 1" in str(error), str(error)
    assert set(session(server)) <= {"mpirun", "tritonserver"}
