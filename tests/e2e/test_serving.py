"""End to end: render the repository for a tiny Llama, start the real tritonserver, use the
tutorial's clients against it, compare with transformers' greedy generate(), stop it cleanly.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from llm_deploy import processes
from llm_deploy.backends.torch.model_repo import render_repository
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec

pytestmark = pytest.mark.e2e

PROMPT = "How do I count to ten in French?"


@dataclass(frozen=True)
class Served:
    handle: tritonserver.StartedServer
    repo: Path


@pytest.fixture(scope="module")
def served(tiny_engine_dir, tiny_llama_checkpoint, tmp_path_factory, free_ports_factory):
    root = tmp_path_factory.mktemp("serving")
    spec = DeploySpec(engines_root=str(root), max_batch_size=4, max_input_len=64, max_output_len=32,
                      benchmark_max_tokens=16, max_queue_delay_microseconds=100)
    repo = root / "inflight_batcher_llm"
    render_repository(spec, engine_dir=tiny_engine_dir, tokenizer_dir=tiny_llama_checkpoint, out_dir=repo)
    handle = tritonserver.start(repo, log_path=root / "tritonserver.log", timeout_s=180, **free_ports_factory())
    try:
        yield Served(handle, repo)
    finally:
        tritonserver.stop(handle)
        assert not processes.group_alive(handle.pgid), "a server process outlived stop()"


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_checkpoint)


def _tensor(name: str, value: np.ndarray):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
    tensor.set_data_from_numpy(value)
    return tensor


def _ensemble_inputs(prompt: str, max_tokens: int, stream: bool = True) -> list:
    """What upstream's end_to_end_streaming_client / the tutorial send to the ensemble."""
    return [
        _tensor("text_input", np.array([[prompt.encode()]], dtype=object)),
        _tensor("max_tokens", np.array([[max_tokens]], dtype=np.uint32)),
        _tensor("bad_words", np.array([[b""]], dtype=object)),
        _tensor("stop_words", np.array([[b""]], dtype=object)),
        _tensor("stream", np.array([[stream]], dtype=bool)),
    ]


def _trtllm_inputs(ids: list[int], output_len: int, streaming: bool) -> list:
    """What upstream's inflight_batcher_llm_client.py (v0.5.0) sends to tensorrt_llm."""
    return [
        _tensor("input_ids", np.array([ids], dtype=np.int32)),
        _tensor("input_lengths", np.array([[len(ids)]], dtype=np.int32)),
        _tensor("request_output_len", np.array([[output_len]], dtype=np.uint32)),
        _tensor("beam_width", np.array([[1]], dtype=np.uint32)),
        _tensor("temperature", np.array([[1.0]], dtype=np.float32)),
        _tensor("streaming", np.array([[streaming]], dtype=bool)),
    ]


def _stream(grpc_url: str, model: str, requests: dict[str, list], timeout: float = 60) -> dict[str, list]:
    """Send each request on one gRPC stream; return each request id's results up to its final one."""
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    collected: dict[str, list] = {request_id: [] for request_id in requests}
    with grpcclient.InferenceServerClient(grpc_url) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for request_id, inputs in requests.items():
            client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        pending = set(requests)
        while pending:
            result, error = results.get(timeout=timeout)
            if error is not None:
                raise AssertionError(f"server error: {error}")
            response = result.get_response()
            if response.outputs:
                collected[response.id].append(result)
            if response.parameters["triton_final_response"].bool_param:
                pending.discard(response.id)
        client.stop_stream()
    return collected


def _text(result) -> str:
    return result.as_numpy("text_output").reshape(-1)[0].decode()


def test_ensemble_streams_the_greedy_text_over_grpc(served, tokenizer, tiny_llama_greedy):
    expected = tiny_llama_greedy(tokenizer.encode(PROMPT), 20)

    [pieces] = _stream(served.handle.grpc_url, "ensemble", {"e2e-1": _ensemble_inputs(PROMPT, 20)}).values()

    assert len(pieces) == len(expected)  # one response per token
    assert "".join(_text(piece) for piece in pieces) == tokenizer.decode(expected)


def test_concurrent_streams_each_get_their_own_greedy_text(served, tokenizer, tiny_llama_greedy):
    prompts = {"a": "The quick brown fox", "b": PROMPT, "c": "Un, deux, trois", "d": "Machine learning is"}
    requests = {rid: _ensemble_inputs(prompt, 8 + i) for i, (rid, prompt) in enumerate(prompts.items())}

    results = _stream(served.handle.grpc_url, "ensemble", requests)

    for i, (rid, prompt) in enumerate(prompts.items()):
        expected = tokenizer.decode(tiny_llama_greedy(tokenizer.encode(prompt), 8 + i))
        assert "".join(_text(piece) for piece in results[rid]) == expected, rid


def test_triton_metrics_show_where_the_batcher_spent_its_time(served):
    """Upstream's request gauges and the twin's time per phase on Triton's /metrics."""
    _stream(served.handle.grpc_url, "ensemble", {f"m{i}": _ensemble_inputs(PROMPT, 6) for i in range(3)})

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(served.handle.metrics_url, timeout=10) as response:
            lines = response.read().decode().splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines
                if line.startswith(("nv_trt_llm_", "llm_deploy_batcher_"))}

    def one(metrics: dict[str, float], prefix: str, **labels) -> float:
        return next((v for name, v in metrics.items()
                     if name.startswith(prefix + "{") and all(f'{k}="{val}"' in name for k, val in labels.items())), 0.0)

    deadline = time.monotonic() + 10  # published once a second
    while one(metrics := scrape(), "llm_deploy_batcher_generated_tokens_total") < 18:
        assert time.monotonic() < deadline, f"the batcher's tokens never reached /metrics: {metrics}"
        time.sleep(0.5)

    assert one(metrics, "nv_trt_llm_request_metrics", request_type="max", model="tensorrt_llm") == 4
    assert one(metrics, "llm_deploy_batcher_seconds_total", phase="decode") > 0
    assert one(metrics, "llm_deploy_batcher_seconds_total", phase="prefill") > 0
    steps = one(metrics, "nv_trt_llm_general_metrics", general_type="iteration_counter")
    assert 0 < steps < one(metrics, "llm_deploy_batcher_decode_rows_total")  # the streams shared steps


def test_generate_endpoint_returns_prompt_and_completion(served, tokenizer, tiny_llama_greedy):
    body = {"text_input": PROMPT, "max_tokens": 16, "bad_words": "", "stop_words": ""}
    request = urllib.request.Request(
        f"{served.handle.http_url}/v2/models/ensemble/generate", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - local test server
        answer = json.loads(response.read())

    ids = tokenizer.encode(PROMPT)
    # tensorrtllm_backend 0.5.0 echoes the prompt (BOS included) before the completion.
    assert answer["text_output"] == tokenizer.decode(ids + tiny_llama_greedy(ids, 16))
    assert answer["text_output"].startswith("<s>" + PROMPT)
    assert answer["model_name"] == "ensemble"


def test_tensorrt_llm_directly_with_input_ids(served, tokenizer, tiny_llama_greedy):
    ids = tokenizer.encode(PROMPT)
    expected = tiny_llama_greedy(ids, 12)

    results = _stream(served.handle.grpc_url, "tensorrt_llm", {
        "streamed": _trtllm_inputs(ids, 12, streaming=True),
        "whole": _trtllm_inputs(ids, 12, streaming=False),
    })

    # Streaming: output_ids [1, 1, 1] per token, read as the upstream client does (output_ids[0][0]).
    assert [t for r in results["streamed"] for t in r.as_numpy("output_ids")[0][0].tolist()] == expected
    assert all(r.as_numpy("sequence_length").tolist() == [[1]] for r in results["streamed"])
    [whole] = results["whole"]
    assert whole.as_numpy("output_ids").tolist() == [[ids + expected]]
    assert whole.as_numpy("sequence_length").tolist() == [[len(ids) + len(expected)]]


def test_tensorrt_llm_rejects_a_too_long_request_with_a_clear_error(served, tokenizer):
    ids = tokenizer.encode(PROMPT)
    with pytest.raises(AssertionError, match=r"request_output_len=33 must be between 1 and the engine's max_output_len=32"):
        _stream(served.handle.grpc_url, "tensorrt_llm", {"too-long": _trtllm_inputs(ids, 33, streaming=True)})


def test_zz_stop_leaves_no_process(served):
    """Runs last in this module: stop the server explicitly and check that nothing is left."""
    handle = served.handle

    assert tritonserver.stop(handle) is True

    assert not processes.is_alive(handle.pid)
    assert not processes.group_alive(handle.pgid)
    assert tritonserver.stop(handle) is False
