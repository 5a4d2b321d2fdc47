"""What the streaming client times: real Triton response messages, replayed with an injected clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from llm_deploy.bench.stream_client import core_model_request, ensemble_request, stream_one


def text_response(text: str | None, final: bool = False):
    """A ModelStreamInferResponse as the ensemble streams it; text None = the empty final response."""
    response = service_pb2.ModelStreamInferResponse()
    infer = response.infer_response
    if text is not None:
        infer.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        infer.raw_output_contents.append(serialize_byte_tensor(np.array([text.encode()], dtype=object)).item())
    infer.parameters["triton_final_response"].bool_param = final
    return response


def ids_response(ids: list[int], final: bool = False):
    response = service_pb2.ModelStreamInferResponse()
    infer = response.infer_response
    infer.outputs.add(name="output_ids", datatype="INT32", shape=[1, 1, len(ids)])
    infer.raw_output_contents.append(np.array([[ids]], dtype=np.int32).tobytes())
    infer.parameters["triton_final_response"].bool_param = final
    return response


class ReplayStub:
    """ModelStreamInfer that answers with ``script``: (seconds to wait on the clock, response)."""

    def __init__(self, clock, script):
        self.clock, self.script = clock, script

    def ModelStreamInfer(self, requests):  # noqa: N802 - Triton's gRPC method name
        async def answer():
            async for _ in requests:
                break
            for wait, response in self.script:
                self.clock.now += wait
                yield response

        return answer()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_empty_texts_and_the_final_response_are_not_tokens():
    clock = Clock()
    stub = ReplayStub(clock, [(0.5, text_response("Un")), (0.25, text_response("")),  # partial UTF-8
                              (0.25, text_response(", deux")), (0.125, text_response(None, final=True))])
    timing = asyncio.run(stream_one(stub, ensemble_request("Count", 8), clock))
    assert timing.text == "Un, deux" and timing.error is None
    assert timing.response_times == [100.5, 101.0]
    assert timing.ttft == 0.5 and timing.latency == 1.0
    assert timing.output_tokens is None  # text: the caller's tokenizer counts


def test_token_ids_from_the_core_model_are_counted_per_response():
    clock = Clock()
    stub = ReplayStub(clock, [(0.25, ids_response([11])), (0.125, ids_response([12, 13])),
                              (0.0, text_response(None, final=True))])
    timing = asyncio.run(stream_one(stub, core_model_request([1, 2, 3], 8), clock))
    assert timing.output_tokens == 3 and timing.response_times == [100.25, 100.375]
    assert timing.itl == 0.0625  # 0.125 s after the first response, over 2 more tokens


def test_a_server_error_is_kept_on_the_request():
    clock = Clock()
    failed = service_pb2.ModelStreamInferResponse(error_message="tensorrt_llm: input too long")
    timing = asyncio.run(stream_one(ReplayStub(clock, [(0.1, failed)]), ensemble_request("x", 8), clock))
    assert timing.error == "tensorrt_llm: input too long" and timing.response_times == []


@pytest.mark.parametrize("target", ["grpc_ensemble", "http_generate_stream"])
def test_a_server_that_never_answers_fails_the_request_at_its_deadline(target):
    """A model process that died without the server noticing: requests fail, the run goes on."""
    from llm_deploy.bench.stream_client import LoadClient
    from llm_deploy.bench.workload import BenchRequest

    async def scenario():
        async def swallow(reader, writer):  # accepts, reads, never answers
            await reader.read(-1)

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with LoadClient(target, grpc_url=f"127.0.0.1:{port}", http_url=f"http://127.0.0.1:{port}",
                                  request_timeout_s=1.0) as client:
                return await asyncio.wait_for(client.send(BenchRequest("hi", [1, 2], 4), 0), timeout=30)
        finally:
            server.close()

    timing = asyncio.run(scenario())
    assert timing.error and timing.response_times == []


def test_the_llmapi_model_takes_unbatched_text_and_the_sampling_params_by_name():
    from llm_deploy.bench.stream_client import text_request
    from llm_deploy.bench.text_models import llmapi_model

    request = text_request(llmapi_model(), "Count", 8, request_id="r1")
    assert request.model_name == "tensorrt_llm"
    shapes = {tensor.name: (tensor.datatype, list(tensor.shape)) for tensor in request.inputs}
    # Its config.pbtxt: max_batch_size 0, text_input dims [-1], the rest dims [1].
    assert shapes == {"text_input": ("BYTES", [1]), "sampling_param_max_tokens": ("INT32", [1]),
                      "sampling_param_exclude_input_from_output": ("BOOL", [1]), "streaming": ("BOOL", [1])}
    assert np.frombuffer(request.raw_input_contents[1], dtype=np.int32).tolist() == [8]
    # The ensemble's request is unchanged: batched, UINT32 max_tokens, empty word lists.
    ensemble = {t.name: (t.datatype, list(t.shape)) for t in ensemble_request("Count", 8).inputs}
    assert ensemble == {"text_input": ("BYTES", [1, 1]), "max_tokens": ("UINT32", [1, 1]),
                        "bad_words": ("BYTES", [1, 1]), "stop_words": ("BYTES", [1, 1]), "stream": ("BOOL", [1, 1])}


def test_a_cumulative_stream_counts_a_token_only_when_the_text_grows():
    # The llmapi model sends the whole text so far in each response.
    clock = Clock()
    stub = ReplayStub(clock, [(0.5, text_response("Un")), (0.25, text_response("Un")),
                              (0.25, text_response("Un, deux")), (0.125, text_response(None, final=True))])
    timing = asyncio.run(stream_one(stub, ensemble_request("Count", 8), clock, cumulative=True))
    assert timing.text == "Un, deux"
    assert timing.response_times == [100.5, 101.0]
