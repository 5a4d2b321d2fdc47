"""Async streaming client for the inflight_batcher_llm ensemble (and the /generate endpoint).

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
from collections.abc import Callable

import numpy as np

from llm_deploy.bench.metrics import RequestTiming

ENSEMBLE = "ensemble"


def ensemble_request(prompt: str, max_tokens: int, *, stream: bool = True, request_id: str = ""):
    """A ModelInferRequest with the ensemble's inputs, as inflight_batcher_llm_client.py sends."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    request = service_pb2.ModelInferRequest(model_name=ENSEMBLE, id=request_id or uuid.uuid4().hex)
    tensors = [
        ("text_input", "BYTES", np.array([[prompt.encode()]], dtype=object)),
        ("max_tokens", "UINT32", np.array([[max_tokens]], dtype=np.uint32)),
        ("bad_words", "BYTES", np.array([[b""]], dtype=object)),
        ("stop_words", "BYTES", np.array([[b""]], dtype=object)),
        ("stream", "BOOL", np.array([[stream]], dtype=bool)),
    ]
    for name, datatype, value in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        # serialize_byte_tensor packs BYTES as Triton wants (4-byte length + data per element).
        raw = serialize_byte_tensor(value).item() if datatype == "BYTES" else value.tobytes()
        request.raw_input_contents.append(raw)
    request.outputs.add(name="text_output")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


async def stream_one(stub, request, clock: Callable[[], float] = time.perf_counter) -> RequestTiming:
    """Send one request on its own stream; timestamp every non-empty response until the final."""
    from tritonclient.grpc import InferResult

    async def requests():
        yield request

    timing = RequestTiming(sent=clock())
    pieces: list[str] = []
    try:
        async for response in stub.ModelStreamInfer(requests()):
            now = clock()
            if response.error_message:
                timing.error = response.error_message
                break
            infer = response.infer_response
            if infer.outputs:
                text = InferResult(infer).as_numpy("text_output")
                timing.token_times.append(now)
                pieces.append(_as_text(text))
            if infer.parameters["triton_final_response"].bool_param:
                break
    except Exception as exc:  # noqa: BLE001 - every failure is counted, never dropped
        timing.error = f"{type(exc).__name__}: {exc}"
    timing.text = "".join(pieces)
    return timing


async def run_load(grpc_url: str, prompt: str, max_tokens: int, *, requests: int, concurrency: int,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[list[RequestTiming], float]:
    """Send ``requests`` streaming requests, at most ``concurrency`` in flight at once."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> RequestTiming:
            async with gate:
                return await stream_one(stub, ensemble_request(prompt, max_tokens, request_id=f"bench-{i}"), clock)

        started = clock()
        timings = await asyncio.gather(*(one(i) for i in range(requests)))
        return list(timings), clock() - started


def generate(http_url: str, prompt: str, max_tokens: int, timeout_s: float = 300) -> str:
    """POST the ensemble's /generate endpoint (the tutorial's second client) and return text_output."""
    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens, "bad_words": "", "stop_words": ""})
    req = urllib.request.Request(
        f"{http_url}/v2/models/{ENSEMBLE}/generate", data=body.encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as response:  # noqa: S310 - our own server URL
        return json.loads(response.read())["text_output"]


def _as_text(value) -> str:
    item = np.asarray(value).reshape(-1)[0]
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
