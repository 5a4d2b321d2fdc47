"""Async load clients for the served model repository: four targets, no thread per request.

  grpc_ensemble          text in, one streamed response per token (inflight_batcher_llm_client.py)
  grpc_tensorrt_llm      token ids straight to the tensorrt_llm model (benchmark_core_model.py)
  http_generate_stream   the ensemble's /generate_stream (server-sent events, one per token)
  http_generate          the ensemble's /generate (one response; only latency and length)

The text targets go to the flow's text model (``text_models``): the ensemble of the engine flow,
or the llmapi flow's tensorrt_llm model, which takes text itself.

Each request is its own gRPC bidirectional stream on one shared channel (HTTP/2 streams are
cheap), driven by asyncio, so hundreds of requests in flight cost no threads. We speak Triton's
public gRPC protocol (tritonclient's generated service stubs) rather than tritonclient.grpc.aio's
stream helper because that helper cannot ask for the empty final response that marks the end of
a decoupled request.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from llm_deploy.bench.metrics import RequestTiming
from llm_deploy.bench.text_models import ENSEMBLE_MODEL, TextModel
from llm_deploy.server import direct_http

ENSEMBLE = "ensemble"
CORE_MODEL = "tensorrt_llm"


_NUMPY = {"UINT32": np.uint32, "INT32": np.int32}


def ensemble_request(prompt: str, max_tokens: int, *, stream: bool = True, request_id: str = ""):
    """A ModelInferRequest with the ensemble's inputs, as inflight_batcher_llm_client.py sends."""
    return text_request(ENSEMBLE_MODEL, prompt, max_tokens, stream=stream, request_id=request_id)


def text_request(model: TextModel, prompt: str, max_tokens: int, *, stream: bool = True, request_id: str = ""):
    """A ModelInferRequest carrying a prompt to the flow's text model."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    request = service_pb2.ModelInferRequest(model_name=model.name, id=request_id or uuid.uuid4().hex)
    tensors = []
    for name, value in model.inputs(prompt, max_tokens, stream=stream).items():
        if isinstance(value, bool):
            datatype, array = "BOOL", np.array([value], dtype=bool)
        elif isinstance(value, str):
            datatype, array = "BYTES", np.array([value.encode()], dtype=object)
        else:
            datatype, array = model.max_tokens_dtype, np.array([value], dtype=_NUMPY[model.max_tokens_dtype])
        tensors.append((name, datatype, array[np.newaxis] if model.batched else array))
    for name, datatype, value in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        # serialize_byte_tensor packs BYTES as Triton wants (4-byte length + data per element).
        raw = serialize_byte_tensor(value).item() if datatype == "BYTES" else value.tobytes()
        request.raw_input_contents.append(raw)
    request.outputs.add(name="text_output")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def core_model_request(input_ids: list[int], max_tokens: int, *, request_id: str = ""):
    """A ModelInferRequest for tensorrt_llm itself, with the inputs benchmark_core_model.py sends."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=CORE_MODEL, id=request_id or uuid.uuid4().hex)
    tensors = [
        ("input_ids", "INT32", np.array([input_ids], dtype=np.int32)),
        ("input_lengths", "INT32", np.array([[len(input_ids)]], dtype=np.int32)),
        ("request_output_len", "UINT32", np.array([[max_tokens]], dtype=np.uint32)),
        ("beam_width", "UINT32", np.array([[1]], dtype=np.uint32)),
        ("temperature", "FP32", np.array([[1.0]], dtype=np.float32)),
        ("streaming", "BOOL", np.array([[True]], dtype=bool)),
    ]
    for name, datatype, value in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    request.outputs.add(name="output_ids")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


async def stream_one(stub, request, clock: Callable[[], float] = time.perf_counter,
                     timeout_s: float | None = None, *, cumulative: bool = False) -> RequestTiming:
    """Send one request on its own stream; timestamp every response with content until the final.

    Text is kept for the caller to count tokens with the model's tokenizer (as genai-perf does);
    token ids from the tensorrt_llm model are counted here. ``cumulative``: each response holds
    the whole text so far (the llmapi model), so a response is a token only if the text grew.
    """
    from tritonclient.grpc import InferResult

    async def requests():
        yield request

    timing = RequestTiming(sent=clock())
    pieces: list[str] = []
    ids = 0
    try:
        # A deadline, so a server whose model process died (its stub can crash without tritonserver
        # noticing for a while) fails the request instead of stalling the whole benchmark.
        call = stub.ModelStreamInfer(requests(), timeout=timeout_s) if timeout_s else stub.ModelStreamInfer(requests())
        async for response in call:
            now = clock()
            if response.error_message:
                timing.error = response.error_message
                break
            infer = response.infer_response
            names = {out.name for out in infer.outputs}
            # Only responses with content time anything (genai-perf/aiperf: an empty text or the
            # empty final response is no token).
            if "text_output" in names:
                piece = _as_text(InferResult(infer).as_numpy("text_output"))
                if cumulative:  # the whole text so far: a token only if it grew
                    if len(piece) > len("".join(pieces)):
                        timing.response_times.append(now)
                        pieces = [piece]
                elif piece:
                    timing.response_times.append(now)
                    pieces.append(piece)
            elif "output_ids" in names:
                count = InferResult(infer).as_numpy("output_ids").size
                if count:
                    timing.response_times.append(now)
                    ids += count
            elif infer.outputs:  # any other model: a response with outputs is content
                timing.response_times.append(now)
            if infer.parameters["triton_final_response"].bool_param:
                break
    except Exception as exc:  # noqa: BLE001 - every failure is counted, never dropped
        timing.error = f"{type(exc).__name__}: {exc}"
    timing.text = "".join(pieces)
    if request.model_name == CORE_MODEL:
        timing.output_tokens = ids  # token ids need no tokenizer: these are the tokens
    return timing


async def run_level(send: Callable[[int], Awaitable[RequestTiming]], *, requests: int, concurrency: int,
                    duration_s: float = 0, clock: Callable[[], float] = time.perf_counter,
                    ) -> tuple[list[RequestTiming], float]:
    """Closed loop, as genai-perf/aiperf --concurrency: ``concurrency`` workers each send their next
    request as soon as the previous one ends, until ``requests`` were sent or ``duration_s`` (if
    > 0) has passed. ``send(i)`` sends request i. Returns every request's timing and the wall time.
    """
    timings: list[RequestTiming] = []
    next_index = 0
    started = clock()

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests and not (duration_s and clock() - started >= duration_s):
            index, next_index = next_index, next_index + 1
            timings.append(await send(index))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    return timings, clock() - started


# Longest one request may take before it counts as failed (a 7B model streaming 2k tokens at
# batch 64 stays well inside it); a dead server fails its requests instead of hanging the run.
REQUEST_TIMEOUT_S = 600.0


def direct_channel(grpc_url: str) -> Any:
    """An asyncio gRPC channel to our own server, never through a proxy from the environment:
    gRPC, like urllib, honours grpc_proxy/https_proxy/http_proxy (see server/direct_http.py)."""
    import grpc

    return grpc.aio.insecure_channel(grpc_url, options=[("grpc.enable_http_proxy", 0)])


class LoadClient:
    """One target on one server; ``send(request, index)`` measures one request.

    Connections are shared by all requests (one gRPC channel with one HTTP/2 stream per request,
    one aiohttp session with a pool as large as the concurrency), so the client stays light.
    """

    def __init__(self, target: str, *, grpc_url: str, http_url: str, concurrency_limit: int = 1024,
                 clock: Callable[[], float] = time.perf_counter, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 text_model: TextModel = ENSEMBLE_MODEL):
        self.target, self.grpc_url, self.http_url, self.clock = target, grpc_url, http_url, clock
        self.text_model = text_model
        self.request_timeout_s = request_timeout_s
        self._limit = concurrency_limit
        self._channel = self._stub = self._session = None

    async def __aenter__(self) -> LoadClient:
        if self.target.startswith("grpc_"):
            from tritonclient.grpc import service_pb2_grpc

            self._channel = direct_channel(self.grpc_url)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        else:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=self.request_timeout_s))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None:
            await self._session.close()

    async def send(self, request, index: int) -> RequestTiming:
        request_id = f"bench-{index}"
        if self.target == "grpc_ensemble":
            message = text_request(self.text_model, request.prompt, request.max_tokens, request_id=request_id)
            return await stream_one(self._stub, message, self.clock, timeout_s=self.request_timeout_s,
                                    cumulative=self.text_model.cumulative_stream)
        if self.target == "grpc_tensorrt_llm":
            message = core_model_request(request.input_ids, request.max_tokens, request_id=request_id)
            return await stream_one(self._stub, message, self.clock, timeout_s=self.request_timeout_s)
        if self.target == "http_generate_stream":
            return await self._http_stream(request)
        if self.target == "http_generate":
            return await self._http_generate(request)
        raise ValueError(f"unknown benchmark target {self.target!r}")

    async def _http_stream(self, request) -> RequestTiming:
        """/generate_stream answers with server-sent events, one ``data: {...}`` line per token."""
        timing = RequestTiming(sent=self.clock())
        pieces: list[str] = []
        try:
            async with self._session.post(f"{self.http_url}/v2/models/{self.text_model.name}/generate_stream",
                                          json=self._body(request, stream=True)) as response:
                if response.status != 200:
                    timing.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    return timing
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    now = self.clock()
                    event = json.loads(line[5:])
                    if "error" in event:
                        timing.error = str(event["error"])
                        break
                    piece = str(event.get("text_output", ""))
                    if self.text_model.cumulative_stream:  # the whole text so far: a token only if it grew
                        if len(piece) > len("".join(pieces)):
                            timing.response_times.append(now)
                            pieces = [piece]
                        continue
                    if piece:  # as aiperf: an event without text is no token
                        timing.response_times.append(now)
                        pieces.append(piece)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, never dropped
            timing.error = f"{type(exc).__name__}: {exc}"
        timing.text = "".join(pieces)
        return timing

    async def _http_generate(self, request) -> RequestTiming:
        """/generate returns everything at once: only request latency is measurable, so the whole
        answer counts as one arrival, TTFT = request latency and there is no inter-token latency
        (genai-perf does the same for non-streaming endpoints); the caller's tokenizer counts the
        output tokens."""
        timing = RequestTiming(sent=self.clock())
        try:
            async with self._session.post(f"{self.http_url}/v2/models/{self.text_model.name}/generate",
                                          json=self._body(request, stream=False)) as response:
                body = await response.text()
                now = self.clock()
                if response.status != 200:
                    timing.error = f"HTTP {response.status}: {body[:200]}"
                    return timing
                timing.response_times.append(now)
                timing.text = json.loads(body)["text_output"]
        except Exception as exc:  # noqa: BLE001
            timing.error = f"{type(exc).__name__}: {exc}"
        return timing


    def _body(self, request, *, stream: bool) -> dict:
        return self.text_model.inputs(request.prompt, request.max_tokens, stream=stream)


def generate(http_url: str, prompt: str, max_tokens: int, timeout_s: float = 300,
             model: TextModel = ENSEMBLE_MODEL) -> str:
    """POST the text model's /generate endpoint (the tutorial's second client) and return text_output."""
    inputs = model.inputs(prompt, max_tokens, stream=False)
    del inputs[model.stream_input]  # as the tutorial's curl: no stream key at all
    body = json.dumps(inputs)
    req = urllib.request.Request(
        f"{http_url}/v2/models/{model.name}/generate", data=body.encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with direct_http.urlopen(req, timeout=timeout_s) as response:
        return json.loads(response.read())["text_output"]


def _as_text(value) -> str:
    item = np.asarray(value).reshape(-1)[0]
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
