"""The tutorial's own configuration, decoupled_mode=false, served for real: one response per
request over HTTP and non-streaming gRPC, as upstream's end_to_end_test.py and identity_test.py
query it, with the same greedy text as transformers' generate()."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from llm_deploy import processes
from llm_deploy.backends.registry import backend_for
from llm_deploy.model_config import parse_model_config
from llm_deploy.server import tritonserver
from llm_deploy.spec import DeploySpec

pytestmark = pytest.mark.e2e

PROMPT = "How do I count to ten in French?"


@pytest.fixture(scope="module")
def server(tiny_engine_dir, tiny_llama_checkpoint, tmp_path_factory, free_ports_factory):
    root = tmp_path_factory.mktemp("tutorial-config")
    spec = DeploySpec(engines_root=str(root), max_batch_size=4, max_input_len=64, max_output_len=32,
                      benchmark_max_tokens=16, decoupled_mode=False, benchmark_targets=["http_generate"])
    repo = root / "inflight_batcher_llm"
    backend_for(spec).render_model_repo(spec, {"engine_dir": str(tiny_engine_dir)},
                                        {"checkpoint_dir": str(tiny_llama_checkpoint)}, repo)
    assert parse_model_config(repo / "tensorrt_llm" / "config.pbtxt").model_transaction_policy.decoupled is False
    started = tritonserver.start(repo, log_path=root / "tritonserver.log", timeout_s=180, **free_ports_factory())
    try:
        yield started
    finally:
        tritonserver.stop(started)
        assert not processes.group_alive(started.pgid)


@pytest.fixture(scope="module")
def expected(tiny_llama_checkpoint, tiny_llama_greedy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_checkpoint)
    return tokenizer.decode(tiny_llama_greedy(tokenizer.encode(PROMPT), 16))


def _inputs(client_module, *, stream: bool) -> list:
    from tritonclient.utils import np_to_triton_dtype

    tensors = {"text_input": np.array([[PROMPT.encode()]], dtype=object),
               "max_tokens": np.array([[16]], dtype=np.uint32),
               "bad_words": np.array([[b""]], dtype=object), "stop_words": np.array([[b""]], dtype=object),
               "stream": np.array([[stream]], dtype=bool)}
    inputs = []
    for name, value in tensors.items():
        tensor = client_module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _text(result) -> str:
    return result.as_numpy("text_output").reshape(-1)[0].decode()


def test_http_infer_answers_once_with_the_greedy_completion(server, expected):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert _text(client.infer("ensemble", _inputs(httpclient, stream=False))) == expected


def test_grpc_without_streaming_answers_once_with_the_greedy_completion(server, expected):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert _text(client.infer("ensemble", _inputs(grpcclient, stream=False))) == expected


def test_the_generate_endpoint_gives_the_completion_only(server, expected):
    body = {"text_input": PROMPT, "max_tokens": 16, "bad_words": "", "stop_words": ""}
    request = urllib.request.Request(f"{server.http_url}/v2/models/ensemble/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - local test server
        assert json.loads(response.read())["text_output"] == expected  # exclude_input_in_output=true


def test_a_streaming_request_is_refused_saying_why(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="streaming=true needs decoupled_mode=true"):
            client.infer("ensemble", _inputs(grpcclient, stream=True))
