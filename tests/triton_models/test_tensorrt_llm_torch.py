"""The torch twin of the tensorrt_llm model, driven in-process with a fake response sender:
its execute loop, the batcher behind it, stop signals, the response thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.triton_models.request_tensors import request_tensors

PROMPT = "How do I count to ten in French?"


@pytest.fixture
def prompt_ids(tiny_llama_checkpoint) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_checkpoint).encode(PROMPT)


@pytest.fixture
def trtllm_model(load_model, model_args, rendered_repo):
    """``trtllm_model(decoupled=True, response_thread=None, parameters=None)``: an initialized
    TritonPythonModel, with more model-config parameters if given; finalized afterwards."""
    started = []

    def make(decoupled: bool = True, response_thread: str | None = None, parameters: dict | None = None):
        module = load_model("tensorrt_llm_torch")
        model = module.TritonPythonModel()
        config = rendered_repo(decoupled=decoupled) / "tensorrt_llm" / "config.pbtxt"
        parameters = dict(parameters or {})
        if response_thread is not None:
            parameters["llm_deploy_response_thread"] = response_thread
        for key, value in parameters.items():
            config.write_text(config.read_text() + f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n')
        model.initialize(model_args(config))
        started.append(model)
        return model

    yield make
    for model in started:
        model.finalize()


def _finish(request, timeout: float = 30) -> None:
    assert request.sender.finished.wait(timeout), "no FINAL flag"


def test_streaming_sends_one_response_per_token_then_final(trtllm_model, make_request, prompt_ids, tiny_llama_greedy):
    model = trtllm_model()
    request = make_request(request_tensors(prompt_ids, 12, streaming=True), request_id="s1")

    assert model.execute([request]) is None
    _finish(request)

    sent = request.sender.sent
    expected = tiny_llama_greedy(prompt_ids, 12)
    token_responses = [response for response, flags in sent if response is not None]
    assert [r.output("output_ids").tolist() for r in token_responses] == [[[[t]]] for t in expected]
    assert all(r.output("sequence_length").tolist() == [[1]] for r in token_responses)
    assert sent[-1] == (None, 1)  # the FINAL flag comes alone, after the last token
    assert all(flags == 0 for _, flags in sent[:-1])


def test_responses_carry_only_the_outputs_the_client_asked_for(trtllm_model, make_request, prompt_ids,
                                                                 tiny_llama_greedy):
    # As upstream's benchmark_core_model.py: output_ids only. Anything more would be dropped by the
    # stub inside send(), which segfaults a Python 3.12 stub (the fake sender refuses it instead).
    model = trtllm_model()
    streaming = make_request(request_tensors(prompt_ids, 6, streaming=True), outputs=("output_ids",))
    whole = make_request(request_tensors(prompt_ids, 6), outputs=("sequence_length",))

    model.execute([streaming, whole])
    _finish(streaming)
    _finish(whole)

    tokens = streaming.sender.responses()
    assert [r.output("output_ids").tolist() for r in tokens] == [[[[t]]] for t in tiny_llama_greedy(prompt_ids, 6)]
    assert all([t.name() for t in r.output_tensors()] == ["output_ids"] for r in tokens)
    [answer] = whole.sender.responses()
    assert [t.name() for t in answer.output_tensors()] == ["sequence_length"]
    assert answer.output("sequence_length").tolist() == [[len(prompt_ids) + 6]]


@pytest.mark.parametrize("thread", ["on", "off", "auto"])
def test_response_thread_sends_the_same_streams_in_order(trtllm_model, make_request, prompt_ids, tiny_llama_greedy,
                                                         thread):
    # "auto" is on; "off" sends (and builds) every response from the batcher's own thread.
    model = trtllm_model(response_thread=thread)
    assert (model._outbox is not None) == (thread != "off")
    requests = [make_request(request_tensors(prompt_ids[:8 + i], 5 + i, streaming=True), outputs=("output_ids",))
                for i in range(3)]

    model.execute(requests)
    for request in requests:
        _finish(request)

    for i, request in enumerate(requests):
        tokens = [r.output("output_ids").tolist()[0][0][0] for r in request.sender.responses()]
        assert tokens == tiny_llama_greedy(prompt_ids[:8 + i], 5 + i)
        assert request.sender.sent[-1] == (None, 1)


def test_non_streaming_returns_prompt_and_tokens_once(trtllm_model, make_request, prompt_ids, tiny_llama_greedy):
    model = trtllm_model()
    request = make_request(request_tensors(prompt_ids, 10))

    model.execute([request])
    _finish(request)

    [(response, flags)] = request.sender.sent
    assert flags == 1
    expected = prompt_ids + tiny_llama_greedy(prompt_ids, 10)  # 0.5.0: output_ids start with the prompt
    assert response.output("output_ids").tolist() == [[expected]]
    assert response.output("sequence_length").tolist() == [[len(expected)]]


def test_end_id_stops_generation_and_is_not_returned(trtllm_model, make_request, prompt_ids, tiny_llama_greedy):
    model = trtllm_model()
    free_run = tiny_llama_greedy(prompt_ids, 10)
    end_id = free_run[3]  # pretend the 4th greedy token is the end token
    request = make_request(request_tensors(prompt_ids, 10, end_id=end_id, streaming=True))

    model.execute([request])
    _finish(request)

    tokens = [r.output("output_ids").item() for r in request.sender.responses()]
    assert tokens == free_run[: free_run.index(end_id)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Refused while reading the tensors (every such refusal: test_tensorrt_llm_tensors.py) ...
        ({"request_output_len": np.array([[33]], dtype=np.uint32)}, "max_output_len=32"),
        # ... and by the batcher, once submitted.
        ({"input_ids": np.array([[1, 999]], dtype=np.int32), "input_lengths": np.array([2], dtype=np.int32)},
         "outside the vocabulary"),
    ],
)
def test_invalid_requests_get_an_error_response(trtllm_model, make_request, prompt_ids, change, message):
    model = trtllm_model()
    request = make_request({**request_tensors(prompt_ids, 8), **change})

    model.execute([request])
    _finish(request, timeout=5)

    [(response, flags)] = request.sender.sent
    assert flags == 1
    assert response.has_error()
    assert message in response.error().message()
    assert response.error().message().startswith("tensorrt_llm: ")


def test_stop_signal_cancels_the_request_with_that_id(trtllm_model, make_request, prompt_ids):
    model = trtllm_model()
    long_run = make_request(request_tensors(prompt_ids, 32, streaming=True), request_id="job-7")
    # Upstream's client: placeholder ids, zero lengths, stop=true, same request id.
    stop = make_request({
        "input_ids": np.empty([1, 1], dtype=np.int32),
        "input_lengths": np.zeros([1], dtype=np.int32),
        "request_output_len": np.array([[0]], dtype=np.uint32),
        "stop": np.array([[True]]),
    }, request_id="job-7")
    long_run.sender.delay_s = 0.05  # 32 tokens take > 1.6 s: the stop lands mid-generation
    model.execute([long_run])
    deadline = time.monotonic() + 10
    while not long_run.sender.sent and time.monotonic() < deadline:  # let it start generating
        time.sleep(0.01)
    model.execute([stop])
    _finish(long_run)
    _finish(stop, timeout=5)

    [(stop_response, flags)] = stop.sender.sent
    assert flags == 1 and not stop_response.has_error() and stop_response.output_tensors() == []
    # The stopped request ends normally (no error) with fewer than its 32 tokens.
    assert long_run.sender.sent[-1] == (None, 1)
    assert not any(r.has_error() for r in long_run.sender.responses())
    assert len(long_run.sender.responses()) < 32


def test_client_cancellation_frees_the_slot(trtllm_model, make_request, prompt_ids):
    model = trtllm_model()
    request = make_request(request_tensors(prompt_ids, 32, streaming=True))
    request.sender.cancelled = True

    model.execute([request])
    _finish(request)

    assert len(request.sender.responses()) == 0
    assert model.batcher.stats["active"] == 0


def test_sampling_inputs_are_accepted_and_logged_once(trtllm_model, make_request, prompt_ids, pb_utils):
    model = trtllm_model()
    requests = [make_request(request_tensors(prompt_ids, 2, temperature=0.7, runtime_top_k=5)) for _ in range(2)]

    model.execute(requests)
    for request in requests:
        _finish(request)

    assert all(not r.sender.sent[0][0].has_error() for r in requests)
    warnings = [m for level, m in pb_utils.Logger.messages if level == "warn"]
    assert len(warnings) == 1 and "temperature" in warnings[0] and "runtime_top_k" in warnings[0]


def test_concurrent_requests_are_batched_in_flight(trtllm_model, make_request, prompt_ids, tiny_llama_greedy):
    model = trtllm_model()
    prompts = [prompt_ids, prompt_ids[:5], prompt_ids[:9], prompt_ids[2:]]
    requests = [make_request(request_tensors(ids, 6 + i, streaming=True)) for i, ids in enumerate(prompts)]

    model.execute(requests)
    for request in requests:
        _finish(request)

    for i, (ids, request) in enumerate(zip(prompts, requests)):
        tokens = [r.output("output_ids").item() for r in request.sender.responses()]
        assert tokens == tiny_llama_greedy(ids, 6 + i)
    assert model.batcher.stats["max_active_seen"] > 1


def test_not_decoupled_returns_responses_from_execute(trtllm_model, make_request, prompt_ids, tiny_llama_greedy):
    model = trtllm_model(decoupled=False)
    plain = make_request(request_tensors(prompt_ids, 5))
    streaming = make_request(request_tensors(prompt_ids, 5, streaming=True))

    ok, refused = model.execute([plain, streaming])

    assert ok.output("output_ids").tolist() == [[prompt_ids + tiny_llama_greedy(prompt_ids, 5)]]
    assert "decoupled_mode=true" in refused.error().message()
    assert plain.sender.sent == [] and streaming.sender.sent == []


def test_stack_dumps_show_every_thread_until_closed(trtllm_model, tmp_path):
    # What a hung server leaves behind, taken from a thread of its own that holds the GIL.
    dumps = tmp_path / "stacks.txt"
    model = trtllm_model(parameters={"llm_deploy_stack_dump_path": str(dumps), "llm_deploy_stack_dump_s": "0.1"})
    deadline = time.monotonic() + 10
    while "inflight.py" not in (dumps.read_text() if dumps.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    text = dumps.read_text()
    assert "every thread's stack" in text and "in _run" in text
    assert "inflight.py" in text, "the batcher thread's stack is in the dump"

    model._stack_dump.close()
    size = dumps.stat().st_size
    time.sleep(0.3)
    assert dumps.stat().st_size == size
    assert "llm-deploy-stack-dumps" not in {thread.name for thread in threading.enumerate()}


def test_llm_deploy_path_is_added_only_when_needed(load_model, pb_utils, monkeypatch, tmp_path):
    import sys

    module = load_model("tensorrt_llm_torch")
    before = list(sys.path)
    module.ensure_llm_deploy_importable(str(tmp_path / "unused"))
    assert sys.path == before  # llm_deploy already importable: sys.path untouched

    monkeypatch.setitem(sys.modules, "llm_deploy", None)  # as if it were not installed
    monkeypatch.setattr(sys, "path", list(before))
    with pytest.raises(ImportError):
        module.ensure_llm_deploy_importable(str(tmp_path / "unused"))
    assert sys.path[0] == str(tmp_path / "unused")


def test_engine_without_engine_config_fails_to_load_with_the_path(load_model, pb_utils, tiny_llama_checkpoint):
    import json

    module = load_model("tensorrt_llm_torch")
    config = {"parameters": {"gpt_model_path": {"string_value": str(tiny_llama_checkpoint)}}}
    with pytest.raises(RuntimeError, match=r"cannot read the engine limits from .*engine_config.json"):
        module.TritonPythonModel().initialize({"model_config": json.dumps(config)})
