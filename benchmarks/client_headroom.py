"""Client headroom: requests/s our load client drives from one core against a trivial model.

The benchmark's figures mean something only if the client is never the bottleneck. Here the
server runs a trivial python-backend model (echo one float; dynamic batching, so the server side
is cheap) and the client, pinned to one core, runs the benchmark's own closed loop
(stream_client.run_level + stream_one, one gRPC stream per request, no threads) at concurrency
64. Two figures: the req/s achieved (bounded by whichever side saturates first on this machine)
and the client's own CPU cost per request, whose inverse is what one core of client could drive
against an infinitely fast server. Goal: ≥ 1000 req/s.

    python benchmarks/client_headroom.py       # writes benchmarks/results/client_headroom.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from _served import free_ports, write_result

TRIVIAL_CONFIG = """
name: "trivial"
backend: "python"
max_batch_size: 256
dynamic_batching { max_queue_delay_microseconds: 200 }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

TRIVIAL_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(
            request, "INPUT0").as_numpy())]) for request in requests]
'''


def trivial_repo(root: Path) -> Path:
    model = root / "trivial"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(TRIVIAL_CONFIG)
    (model / "1" / "model.py").write_text(TRIVIAL_MODEL)
    return root


def trivial_request(index: int):
    import numpy as np
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="trivial", id=f"r{index}")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[float(index)]], dtype=np.float32).tobytes())
    request.outputs.add(name="OUTPUT0")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


async def drive(grpc_url: str, concurrency: int, duration_s: float) -> dict:
    from tritonclient.grpc import service_pb2_grpc

    from llm_deploy.bench.metrics import summarize
    from llm_deploy.bench.stream_client import direct_channel, run_level, stream_one

    async with direct_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await run_level(lambda i: stream_one(stub, trivial_request(i)), requests=200, concurrency=concurrency)
        cpu_started = time.process_time()
        timings, wall_s = await run_level(lambda i: stream_one(stub, trivial_request(i)), requests=10**9,
                                          concurrency=concurrency, duration_s=duration_s)
        cpu_s = time.process_time() - cpu_started
    summary = summarize(timings, wall_s)
    return {"concurrency": concurrency, "requests": summary["requests"], "errors": summary["errors"],
            "error_messages": summary["error_messages"], "wall_s": summary["wall_s"],
            "requests_per_s": summary["request_throughput_per_s"],
            "request_latency_ms": summary["request_latency_ms"],
            "client_cpu_s": round(cpu_s, 3),
            "client_cpu_us_per_request": round(cpu_s / max(len(timings), 1) * 1e6, 1),
            "client_one_core_capacity_req_per_s": round(len(timings) / cpu_s, 1) if cpu_s else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()

    from llm_deploy.server import tritonserver

    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the client gets one core
    with tempfile.TemporaryDirectory() as tmp:
        repo = trivial_repo(Path(tmp) / "repo")
        handle = tritonserver.start(repo, log_path=Path(tmp) / "tritonserver.log", timeout_s=120, **free_ports())
        try:
            figures = asyncio.run(drive(handle.grpc_url, args.concurrency, args.duration_s))
        finally:
            tritonserver.stop(handle)
    figures.update({"what": "closed-loop req/s of the benchmark client from one core against a trivial "
                            "python-backend model on the same machine",
                    "client_cores": len(os.sched_getaffinity(0)), "cpus": os.cpu_count(), "goal_req_per_s": 1000})
    write_result("client_headroom", figures)


if __name__ == "__main__":
    main()
