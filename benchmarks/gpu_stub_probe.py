"""Which part of a GPU worker crashes the python-backend stub when a thread sends responses?

benchmarks/results/gpu_triton_llama7b_h100.json records the served CUDA path dying: the stub
segfaults in ``InferenceResponseSender.send`` called from the in-flight batcher's thread. The
same send-from-a-thread runs fine under the 3.11 stub (CI) and under the 3.12 stub on CPU (this
probe with --probes plain on the dev machine), so this takes the model out of the question and
adds one ingredient at a time, each in its own model (its own stub process, so one crash does
not hide the others):

- ``plain``: a thread sends N responses, no torch;
- ``cuda``: torch imported and CUDA initialised in initialize(), the thread runs a CUDA op and
  synchronises before each send;
- ``graph``: the thread captures a CUDA graph first and replays it before each send (what the
  in-flight batcher does for decode);
- ``pruned``: each response also carries an output the client did not ask for (the stub drops
  it before sending), as the tensorrt_llm model's sequence_length for a client asking for
  output_ids only; asked over gRPC, since HTTP /generate_stream asks for every output;
- ``cancel``: is_cancelled() before each send, as the tensorrt_llm model does;
- ``bigmem``: all of the above at the 7B model's size: 24 GiB held on the GPU, a GEMM per token.

Each model is asked for N streamed responses through HTTP ``/generate_stream`` (no client
library needed). Figures per probe: responses received, error, whether its stub is still alive,
and any fatal-error trace the stub wrote (faulthandler, all threads).

It answered twice. The stub's numpy: with numpy 2 every tensor is corrupt
(benchmarks/results/gpu_stub_probe_h200.json; tritonserver.start has refused numpy 2 for the
stubs since, so that half cannot be rerun as is). And ``pruned``: an output the client did not ask
for, freed by the stub inside send() without the GIL, segfaults a Python 3.12 stub, on a GPU or
not (benchmarks/results/gpu_stub_probe_pruned.json); that was the served model's segfault.

Run: python3 benchmarks/gpu_stub_probe.py --out benchmarks/results/gpu_stub_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from llm_deploy.server import direct_http, tritonserver  # noqa: E402

MODEL = '''
import faulthandler, queue, threading
import numpy as np
import triton_python_backend_utils as pb_utils


CPU_ONLY = ("plain", "pruned", "cancel")


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in __import__("json").loads(args["model_config"])["parameters"].items()}
        self.probe = params["probe"]
        self.trace = open(params["trace_path"], "w")
        faulthandler.enable(file=self.trace, all_threads=True)
        if self.probe not in CPU_ONLY:
            import torch
            self.torch = torch
            self.x = torch.ones(1 << 20, device="cuda")
            if self.probe == "bigmem":  # the 7B model's weights + KV cache, and a GEMM per token
                self.hold = torch.empty(24 << 30, dtype=torch.uint8, device="cuda")
                self.w = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
            torch.cuda.synchronize()
        self.q = queue.SimpleQueue()
        threading.Thread(target=self.loop, name="sender", daemon=True).start()

    def loop(self):
        graph = None
        if self.probe == "graph":
            torch = self.torch
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.x.mul_(1.0)  # warm-up outside capture, as torch asks
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.x.mul_(1.0001)
        while True:
            sender, n = self.q.get()
            for i in range(n):
                if graph is not None:
                    graph.replay()
                if self.probe not in CPU_ONLY:
                    self.x.add_(1)
                    if self.probe == "bigmem":
                        self.w @ self.w
                    self.torch.cuda.synchronize()
                if self.probe in ("cancel", "bigmem") and sender.is_cancelled():
                    return
                final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if i == n - 1 else 0
                if self.probe in ("pruned", "bigmem"):
                    # J is not asked for, so the stub drops it inside send(); built inline, so the
                    # stub holds its only reference, as in the tensorrt_llm model's token_response.
                    sender.send(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("I", np.array([i], dtype=np.int32)),
                        pb_utils.Tensor("J", np.array([i], dtype=np.int32))]), flags=final)
                else:
                    sender.send(pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor("I", np.array([i], dtype=np.int32))]), flags=final)

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            self.q.put((request.get_response_sender(), n))
        return None
'''

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "N", data_type: TYPE_INT32, dims: [ 1 ] }} ]
output [ {{ name: "I", data_type: TYPE_INT32, dims: [ 1 ] }}, {{ name: "J", data_type: TYPE_INT32, dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
parameters: {{ key: "probe" value: {{ string_value: "{probe}" }} }}
parameters: {{ key: "trace_path" value: {{ string_value: "{trace}" }} }}
"""


def write_repo(root: Path, probes: list[str], traces: Path) -> Path:
    repo = root / "repo"
    for probe in probes:
        name = f"probe_{probe}"
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(MODEL)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, probe=probe, trace=traces / f"{name}.trace"))
    return repo


def stream(http_url: str, model: str, n: int, timeout_s: float) -> dict:
    request = urllib.request.Request(f"{http_url}/v2/models/{model}/generate_stream",
                                     data=json.dumps({"N": n}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    received, started = 0, time.perf_counter()
    try:
        with direct_http.urlopen(request, timeout=timeout_s) as response:
            for line in response:
                if line.startswith(b"data:"):
                    received += 1
        error = None
    except urllib.error.HTTPError as exc:
        error = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"asked": n, "received": received, "error": error, "seconds": round(time.perf_counter() - started, 3)}


def stream_grpc(grpc_url: str, model: str, n: int, timeout_s: float) -> dict:
    """As ``stream``, over gRPC asking for output I only (HTTP /generate_stream returns them all)."""
    import asyncio

    import numpy as np
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from llm_deploy.bench.stream_client import direct_channel, stream_one

    request = service_pb2.ModelInferRequest(model_name=model, id="probe")
    request.inputs.add(name="N", datatype="INT32", shape=[1])
    request.raw_input_contents.append(np.array([n], dtype=np.int32).tobytes())
    request.outputs.add(name="I")

    async def send():
        async with direct_channel(grpc_url) as channel:
            return await stream_one(service_pb2_grpc.GRPCInferenceServiceStub(channel), request, timeout_s=timeout_s)

    started = time.perf_counter()
    timing = asyncio.run(send())
    return {"asked": n, "received": len(timing.response_times), "error": timing.error,
            "seconds": round(time.perf_counter() - started, 3)}


def stubs_alive(pgid: int) -> int:
    return len(tritonserver.stub_pids(pgid))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--probes", default="plain,cuda,graph")
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=30)
    args = parser.parse_args()
    probes = args.probes.split(",")
    traces = args.out.parent / "stub-traces"
    traces.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": " ".join(["python3", *sys.argv]), "python": platform.python_version(),
                    "host": platform.node(), "probes": {}}
    try:
        import torch
        report["torch"] = torch.__version__
        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        report["torch"] = None
    with tempfile.TemporaryDirectory() as scratch:
        repo = write_repo(Path(scratch), probes, traces)
        log_path = args.out.parent / "stub-probe-tritonserver.log"
        handle = tritonserver.start(repo, http_port=18600, grpc_port=18601, metrics_port=18602,
                                    log_path=log_path, timeout_s=300)
        try:
            for probe in probes:
                if probe in ("pruned", "bigmem"):
                    result = stream_grpc(handle.grpc_url, f"probe_{probe}", args.responses, args.timeout_s)
                else:
                    result = stream(handle.http_url, f"probe_{probe}", args.responses, args.timeout_s)
                time.sleep(1)  # a stub that crashed on the last send needs a moment to be gone
                result["stubs_alive_after"] = stubs_alive(handle.pgid)
                report["probes"][probe] = result
                print(probe, json.dumps(result), flush=True)
        finally:
            tritonserver.stop(handle)
    for probe in probes:
        trace = traces / f"probe_{probe}.trace"
        text = trace.read_text(errors="replace") if trace.exists() else ""
        report["probes"][probe]["fatal_trace"] = text[-3000:] or None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
