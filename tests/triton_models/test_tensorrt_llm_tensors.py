"""The tensorrt_llm model's tensors: a request's inputs read and checked, its responses built,
on stand-in requests (no engine, no batcher)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.triton_models.request_tensors import request_tensors

LIMITS = SimpleNamespace(max_input_len=64, max_output_len=32)  # what parse_request reads of EngineLimits


@pytest.fixture
def tensors(load_model):
    return load_model("tensorrt_llm_tensors")


def test_a_request_reads_into_its_ids_length_and_flags(tensors, make_request):
    inputs = {**request_tensors([5, 6, 7, 0], 8, streaming=True), "input_lengths": np.array([3], dtype=np.int32)}

    parsed = tensors.parse_request(make_request(inputs), LIMITS, default_end_id=2)

    assert parsed == tensors.ParsedRequest(input_ids=[5, 6, 7], max_new_tokens=8, end_id=2, streaming=True,
                                           stop=False, ignored=(), outputs=("output_ids", "sequence_length"))


def test_end_id_sent_with_the_request_wins_over_the_checkpoints(tensors, make_request):
    parsed = tensors.parse_request(make_request(request_tensors([1, 2], 4, end_id=9)), LIMITS, default_end_id=2)
    assert parsed.end_id == 9 and parsed.streaming is False


def test_the_outputs_are_those_the_client_asked_for_in_the_models_order(tensors, make_request):
    request = make_request(request_tensors([1, 2], 4), outputs=("sequence_length", "output_ids"))
    assert tensors.parse_request(request, LIMITS, None).outputs == ("output_ids", "sequence_length")
    request = make_request(request_tensors([1, 2], 4), outputs=("output_ids",))
    assert tensors.parse_request(request, LIMITS, None).outputs == ("output_ids",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_output_len": np.array([[33]], dtype=np.uint32)}, "max_output_len=32"),
        ({"request_output_len": np.array([[0]], dtype=np.uint32)}, "request_output_len=0"),
        ({"input_ids": np.zeros((1, 65), dtype=np.int32), "input_lengths": np.array([65], dtype=np.int32)},
         "max_input_len=64"),
        ({"input_lengths": np.array([99], dtype=np.int32)}, "input_lengths=99"),
        ({"input_ids": np.zeros((2, 3), dtype=np.int32)}, "shape [1, input_len]"),
        ({"beam_width": np.array([2], dtype=np.uint32)}, "beam_width=2"),
        ({"end_id": np.array([[1, 2]], dtype=np.uint32)}, "end_id must hold one value per request"),
    ],
)
def test_invalid_requests_are_refused_naming_the_problem(tensors, make_request, change, message):
    with pytest.raises(tensors.RequestError, match=message.replace("[", r"\[")):
        tensors.parse_request(make_request({**request_tensors([1, 2, 3], 8), **change}), LIMITS, None)


@pytest.mark.parametrize("missing", ["input_ids", "input_lengths", "request_output_len"])
def test_required_inputs_are_named_when_missing(tensors, make_request, missing):
    inputs = request_tensors([1, 2, 3], 8)
    del inputs[missing]
    with pytest.raises(tensors.RequestError, match=f"{missing} is required"):
        tensors.parse_request(make_request(inputs), LIMITS, None)


def test_a_stop_signal_needs_no_valid_ids(tensors, make_request):
    # Upstream's client: placeholder ids, zero lengths, stop=true.
    stop = make_request({
        "input_ids": np.empty([1, 1], dtype=np.int32),
        "input_lengths": np.zeros([1], dtype=np.int32),
        "request_output_len": np.array([[0]], dtype=np.uint32),
        "stop": np.array([[True]]),
    })
    parsed = tensors.parse_request(stop, LIMITS, default_end_id=2)
    assert parsed.stop and parsed.input_ids == [] and parsed.end_id is None


def test_sampling_inputs_are_listed_as_ignored(tensors, make_request):
    parsed = tensors.parse_request(make_request(request_tensors([1, 2], 4, temperature=0.7, runtime_top_k=5)), LIMITS, None)
    assert parsed.ignored == ("temperature", "runtime_top_k")


def test_a_token_response_has_upstreams_layout_and_only_the_outputs_asked_for(tensors):
    both = tensors.token_response([4, 5, 6])
    assert both.output("output_ids").tolist() == [[[4, 5, 6]]] and both.output("output_ids").dtype == np.int32
    assert both.output("sequence_length").tolist() == [[3]]
    only_ids = tensors.token_response([4], ("output_ids",))
    assert [t.name() for t in only_ids.output_tensors()] == ["output_ids"]


def test_an_error_response_carries_the_message_and_no_outputs(tensors):
    response = tensors.error_response("tensorrt_llm: no")
    assert response.has_error() and response.error().message() == "tensorrt_llm: no"
    assert response.output_tensors() == []
