"""Triton model "tensorrt_llm", PyTorch twin: what the C++ tensorrtllm backend does, in a python model.

Same tensors as upstream's tensorrt_llm model (tensorrtllm_backend v0.5.0, commit 47b609b6) plus
v0.6.0's sequence_length output, so the ensemble and inflight_batcher_llm_client.py cannot tell
the twins apart:

- decoupled (the tutorial's decoupled_mode=true): execute() hands every request to an
  InflightBatcher and returns at once; tokens come back from the batcher thread through each
  request's response sender. streaming=true sends one response per token (output_ids
  [1, 1, 1], sequence_length [1, 1]); streaming=false sends one response with the prompt followed
  by every generated token, as 0.5.0 does (exclude_input_in_output=true drops the prompt).
  Either way the last message carries the FINAL flag.
- not decoupled: execute() waits for its requests and returns one response each.
- stop=true with a request's id cancels it, as upstream's client does with --stop-after-ms.

Greedy decoding only: the sampling inputs (temperature, runtime_top_k, ...) are accepted so
upstream clients work, and ignored with a warning; beam_width must be 1.

This file is the model's execute loop: loading the engine, one Generation per request in
flight, stop signals, the response thread, logging into Triton's log. The tensors themselves
(reading a request's inputs, building its responses) are ``tensorrt_llm_tensors.py``, which
the renderer copies next to this file's model.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils
from tensorrt_llm_tensors import ParsedRequest, RequestError, error_response, parse_request, token_response

ENGINE_CONFIG = "engine_config.json"
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


@dataclass(frozen=True)
class EngineLimits:
    dtype: str
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    world_size: int = 1

    @classmethod
    def read(cls, engine_dir: Path) -> EngineLimits:
        path = engine_dir / ENGINE_CONFIG
        try:
            config = json.loads(path.read_text())
            return cls(
                dtype=str(config["dtype"]),
                max_batch_size=int(config["max_batch_size"]),
                max_input_len=int(config["max_input_len"]),
                max_output_len=int(config["max_output_len"]),
                world_size=int(config.get("world_size", 1)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"cannot read the engine limits from {path}: {exc!r}") from exc


def ensure_llm_deploy_importable(plugins_dir: str | None) -> None:
    """Make ``import llm_deploy`` work inside the stub's interpreter.

    The stub ignores PYTHONPATH; it sees the venv's site-packages (where ``pip install -e .``
    puts llm_deploy) only. For a checkout that is not installed, the renderer passes the plugins
    directory as the llm_deploy_path parameter, and only then is it put on sys.path.
    """
    try:
        import llm_deploy  # noqa: F401
    except ImportError:
        if not plugins_dir:
            raise
        sys.path.insert(0, plugins_dir)
        import llm_deploy  # noqa: F401


@dataclass
class Generation:
    """One request in flight: turns the batcher's callbacks into Triton responses."""

    request_id: str
    parsed: ParsedRequest
    send: Callable[[Any, int], None]
    is_cancelled: Callable[[], bool]
    cancel: Callable[[str], None]
    exclude_input: bool
    on_finish: Callable[[], None] = lambda: None
    tokens: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _finished: bool = False

    def on_token(self, token: int) -> None:
        if self.parsed.end_id is not None and token == self.parsed.end_id:
            return  # TensorRT-LLM does not return the end token either
        if not self.stopped and self.is_cancelled():  # the client went away
            self.stop()
            return
        with self._lock:
            if self._finished or self.stopped:
                return
            self.tokens.append(int(token))
            if self.parsed.streaming:
                # Built where it is sent: with the response thread on, off the batcher's thread,
                # whose every microsecond between GPU steps is idle GPU time (64 builds a step).
                self._send(functools.partial(token_response, [int(token)], self.parsed.outputs), 0)

    def stop(self) -> None:
        """Cancel in the batcher; what was generated so far still goes out, as with TensorRT-LLM."""
        self.stopped = True
        self.cancel(self.request_id)

    def on_done(self, error: str | None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            # A stop is not a failure: the tokens generated so far are the answer, as in TensorRT-LLM.
            self.error = None if self.stopped or error is None else f"tensorrt_llm: {error}"
        try:
            if self.error is not None:
                self._send(error_response(self.error), _FINAL)
            elif self.parsed.streaming:
                self._send(None, _FINAL)
            else:
                prompt = [] if self.exclude_input else self.parsed.input_ids
                self._send(token_response(prompt + self.tokens, self.parsed.outputs), _FINAL)
        finally:
            self.done.set()
            self.on_finish()

    def _send(self, response: Any, flags: int) -> None:
        try:
            self.send(response, flags)
        except Exception as exc:  # noqa: BLE001 - a client that left must not kill the batcher thread
            _log("warn", f"request {self.request_id}: could not send a response: {exc}")
            if not self.stopped:
                self.stop()



def default_end_id(engine_dir: Path) -> int | None:
    """The checkpoint's EOS, so generation stops where HF generate() would when no end_id is sent."""
    for name in ("generation_config.json", "config.json"):
        path = engine_dir / name
        if not path.exists():
            continue
        eos = json.loads(path.read_text()).get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is not None:
            return int(eos)
    return None


def resolve_device(name: str) -> str:
    import torch

    if name in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _lead_ranks(engine_dir: Path, world_size: int, sizes: dict) -> Any:
    """Rank 0 of a tensor-parallel engine: load its shard, wait for the other ranks (started
    beside tritonserver by mpirun, see backends/torch/serve.py) to join, lead their steps."""
    import torch

    from llm_deploy.backends.torch import ranks
    from llm_deploy.backends.torch.llama import LlamaEngine

    address = os.environ.get(ranks.ADDRESS_ENV)
    if not address:
        raise RuntimeError(f"{engine_dir} is split over {world_size} ranks, and no {ranks.ADDRESS_ENV} says where "
                           "they meet: start this repository with start_server, which launches every rank under mpirun")
    torch.set_num_threads(ranks.threads_per_rank(world_size))
    engine = LlamaEngine.load(engine_dir, **sizes, rank=0, all_reduce=ranks.all_reduce)
    _log("info", f"rank 0 of {world_size}: waiting for the other ranks at {address}")
    peers = ranks.join(0, world_size, address, engine.device)
    _log("info", f"all {world_size} ranks joined: {peers}")
    return ranks.LeaderEngine(engine, peers)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        ensure_llm_deploy_importable(params.get("llm_deploy_path"))
        _forward_logging_to_triton()
        self._stack_dump = _stack_dumps(params)
        import torch

        from llm_deploy.backends.torch.inflight import InflightBatcher
        from llm_deploy.backends.torch.llama import LlamaEngine

        engine_dir = Path(params.get("gpt_model_path") or params["engine_dir"])
        self.limits = EngineLimits.read(engine_dir)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.exclude_input = params.get("exclude_input_in_output", "false").lower() == "true"
        self.end_id = default_end_id(engine_dir)
        device = resolve_device(params.get("llm_deploy_device", "auto"))
        _log("info", f"loading {engine_dir} ({self.limits}) on {device}")
        sizes = dict(dtype=getattr(torch, self.limits.dtype), device=device, max_batch_size=self.limits.max_batch_size,
                     max_seq_len=self.limits.max_input_len + self.limits.max_output_len)
        from llm_deploy.backends.torch.openmp_teams import on_passing_thread

        # Never on this (the stub's main) thread: see openmp_teams.py.
        if self.limits.world_size > 1:
            engine = on_passing_thread(lambda: _lead_ranks(engine_dir, self.limits.world_size, sizes))
        else:
            engine = on_passing_thread(lambda: LlamaEngine.load(engine_dir, **sizes))
            # "auto": a GPU engine compiles its ops and captures its decode graphs now, before the
            # server says READY, not on the first requests after it; "off" leaves them to those.
            if params.get("llm_deploy_capture_ahead", "auto").lower() != "off":
                on_passing_thread(engine.capture_ahead)
        # "auto": a GPU engine launches each step before handing out the last one's tokens (see
        # inflight.py); "off" hands them out first, for A/B runs.
        overlap = False if params.get("llm_deploy_overlap", "auto").lower() == "off" else None
        self.batcher = InflightBatcher(
            engine,
            max_batch_size=self.limits.max_batch_size,
            max_input_len=self.limits.max_input_len,
            max_output_len=self.limits.max_output_len,
            overlap=overlap,
        )
        self.batcher.start()
        self._metrics = _batcher_metrics(args, self.batcher)
        self._by_client_id: dict[str, dict[str, Generation]] = {}
        self._ids_lock = threading.Lock()
        self._warned: set[str] = set()
        # "auto" = on. On CUDA it halved the time per token at concurrency 64 on an H200
        # (benchmarks/results/gpu_triton_llama7b_h200.json). On the 2-core CPU default it takes
        # the responses off the batcher's critical path too: at concurrency 16, 163-169 tok/s
        # against 161 without (runs alternated), at the price of first tokens queued behind a
        # step's other responses. "off" turns it off.
        thread = params.get("llm_deploy_response_thread", "auto").lower()
        use_outbox = thread != "off"
        self._outbox = ResponseOutbox() if self.decoupled and use_outbox else None
        _log("info", f"tensorrt_llm (torch) ready: decoupled={self.decoupled}, end_id={self.end_id}, "
                     f"response thread={'on' if self._outbox else 'off'}, "
                     f"overlapped steps={'on' if self.batcher.overlap else 'off'}")

    def execute(self, requests: list) -> list | None:
        if self.decoupled:
            for request in requests:
                sender = request.get_response_sender()
                if self._outbox is not None:
                    self._start(request, *self._outbox.channel(sender))
                    continue
                self._start(request, lambda response, flags, s=sender: _send(s, response, flags), sender.is_cancelled)
            return None
        return [self._run_blocking(request) for request in requests]

    def finalize(self) -> None:
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.stop()
            if getattr(self, "_metrics", None) is not None:
                self._metrics.close()  # kept: see BatcherMetrics.close
            _log("info", f"tensorrt_llm (torch) stopped: {batcher.stats}")
            if hasattr(batcher.engine, "stop_followers"):  # rank 0 of several: let the others go
                from llm_deploy.backends.torch import ranks

                with contextlib.suppress(Exception):  # ranks already gone (mpirun stops them too)
                    batcher.engine.stop_followers()
                ranks.leave()
        if getattr(self, "_outbox", None) is not None:
            self._outbox.close()
        if getattr(self, "_stack_dump", None) is not None:  # last: a hang in stopping is still dumped
            self._stack_dump.close()

    # --- one request ------------------------------------------------------------------------
    def _start(self, request: Any, send: Callable[[Any, int], None], is_cancelled: Callable[[], bool]) -> Generation | None:
        """Parse and submit; on refusal the error goes out through ``send`` with the FINAL flag."""
        client_id = request.request_id() or ""
        try:
            parsed = parse_request(request, self.limits, self.end_id)
        except RequestError as exc:
            send(error_response(f"tensorrt_llm: {exc}"), _FINAL)
            return None
        if parsed.stop:
            self._cancel_client_id(client_id)
            # Upstream answers a stop signal with a response that has no output_ids.
            send(pb_utils.InferenceResponse(output_tensors=[]), _FINAL)
            return None
        if parsed.streaming and not self.decoupled:
            send(error_response("tensorrt_llm: streaming=true needs decoupled_mode=true"), _FINAL)
            return None
        self._warn_ignored(parsed.ignored)
        internal_id = f"{client_id or 'request'}-{uuid.uuid4().hex[:12]}"
        generation = Generation(
            internal_id, parsed, send, is_cancelled, self.batcher.cancel, self.exclude_input,
            on_finish=lambda: self._forget(client_id, internal_id),
        )
        self._track(client_id, internal_id, generation)
        try:
            self.batcher.submit(self._generation_request(generation))
        except (ValueError, RuntimeError) as exc:  # refused, or the batcher is shutting down
            generation.on_done(str(exc))
        return generation

    def _generation_request(self, generation: Generation) -> Any:
        from llm_deploy.backends.torch.inflight import GenerationRequest

        return GenerationRequest(
            request_id=generation.request_id,
            input_ids=generation.parsed.input_ids,
            max_new_tokens=generation.parsed.max_new_tokens,
            end_id=generation.parsed.end_id,
            on_token=generation.on_token,
            on_done=generation.on_done,
        )

    def _run_blocking(self, request: Any) -> Any:
        box: dict[str, Any] = {}

        def keep(response: Any, flags: int) -> None:
            box["response"] = response

        generation = self._start(request, keep, lambda: False)
        if generation is not None:
            generation.done.wait()
        response = box.get("response")
        return response if response is not None else pb_utils.InferenceResponse(output_tensors=[])

    # --- stop signals ---------------------------------------------------------------------
    def _track(self, client_id: str, internal_id: str, generation: Generation) -> None:
        with self._ids_lock:
            self._by_client_id.setdefault(client_id, {})[internal_id] = generation

    def _forget(self, client_id: str, internal_id: str) -> None:
        with self._ids_lock:
            generations = self._by_client_id.get(client_id, {})
            generations.pop(internal_id, None)
            if not generations:
                self._by_client_id.pop(client_id, None)

    def _cancel_client_id(self, client_id: str) -> None:
        if not client_id:
            _log("warn", "stop signal without a request id: nothing to cancel")
            return
        with self._ids_lock:
            targets = list(self._by_client_id.get(client_id, {}).values())
        _log("info", f"stop signal for request id {client_id!r}: cancelling {len(targets)} request(s)")
        for generation in targets:
            generation.stop()

    def _warn_ignored(self, names: tuple[str, ...]) -> None:
        new = [name for name in names if name not in self._warned]
        if new:
            self._warned.update(new)
            _log("warn", f"greedy decoding: ignoring {', '.join(new)} (the torch backend does not sample)")


def _batcher_metrics(args: dict, batcher: Any) -> Any:
    """The batcher's counters on Triton's /metrics (backends/torch/batcher_metrics.py); None
    where this python backend has no custom metrics."""
    if not hasattr(pb_utils, "MetricFamily"):
        return None
    from llm_deploy.backends.torch.batcher_metrics import BatcherMetrics

    return BatcherMetrics(pb_utils, lambda: batcher.stats, model=args.get("model_name", "tensorrt_llm"),
                          version=str(args.get("model_version", "1")),
                          max_batch_size=batcher.max_batch_size).start()


class ResponseOutbox:
    """Sends decoupled responses from a thread of its own (on unless llm_deploy_response_thread=off).

    The stub's send() and is_cancelled() are each a round trip to the server process. Made on
    the batcher thread they run between GPU steps, one send (plus a cancel check) per token: 64
    each step at batch 64. Here they overlap the next step, which the batcher launches meanwhile;
    so does building each token's response, handed over as a builder. One FIFO keeps every
    request's responses in order; a client that went away is noticed every ``CHECK_EVERY``
    responses and reported through the is_cancelled() handed to Generation.
    """

    CHECK_EVERY = 8

    def __init__(self) -> None:
        import queue

        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tensorrt_llm-responses", daemon=True)
        self._thread.start()

    def channel(self, sender: Any) -> tuple[Callable[[Any, int], None], Callable[[], bool]]:
        """(send, is_cancelled) for one request's sender."""
        state = {"sent": 0, "cancelled": False}
        return (lambda response, flags: self._queue.put((sender, state, response, flags)),
                lambda: state["cancelled"])

    def close(self, timeout: float = 10) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            sender, state, response, flags = item
            try:
                if state["sent"] % self.CHECK_EVERY == 0 and not state["cancelled"]:
                    state["cancelled"] = bool(sender.is_cancelled())
                state["sent"] += 1
                if state["cancelled"] and not flags & _FINAL:
                    continue  # nobody reads it; the request is being stopped (Generation.on_token)
                _send(sender, response, flags)
            except Exception as exc:  # noqa: BLE001 - a client that left must not stop the others' responses
                state["cancelled"] = True
                _log("warn", f"could not send a response: {exc}")


def _send(sender: Any, response: Any, flags: int) -> None:
    """``response``: an InferenceResponse, a callable building one, or None (flags only)."""
    if callable(response):
        response = response()
    if response is None:
        sender.send(flags=flags)
    else:
        sender.send(response, flags=flags)


def _stack_dumps(params: dict[str, str]) -> StackDumps | None:
    """For a server that hangs: every thread's Python stack appended to a file every N seconds
    (params llm_deploy_stack_dump_path and llm_deploy_stack_dump_s; off unless both are set)."""
    path, every = params.get("llm_deploy_stack_dump_path", ""), float(params.get("llm_deploy_stack_dump_s", "0") or 0)
    if not path or every <= 0:
        return None
    dumps = StackDumps(Path(path), every)
    _log("warn", f"dumping every thread's stack to {path} every {every:.0f}s (llm_deploy_stack_dump_s)")
    return dumps


class StackDumps:
    """Every thread's Python stack written to ``path`` every ``every`` seconds, from a thread of
    its own that holds the GIL while it reads them; faulthandler kept for fatal signals only.

    faulthandler's own timer (``dump_traceback_later``) walks the other threads' frames without
    the GIL, which is unsafe while threads start and end (python/cpython#116008). On an H100 a
    stub died in the middle of such a dump, its file cut off inside a frame, while torch.compile
    was compiling the decode graphs at load
    (benchmarks/results/gpu_triton_llama7b_h100_compiled_overlap.json). A thread stuck in native
    code holding the GIL stops these dumps too; py-spy reads those from outside.
    """

    def __init__(self, path: Path, every: float) -> None:
        import faulthandler

        self.path = path
        self._out = path.open("a")
        # A stub that crashes (SIGSEGV/SIGABRT in native code) dies silently otherwise: tritonserver
        # only notices much later that it is gone.
        faulthandler.enable(file=self._out, all_threads=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), name="llm-deploy-stack-dumps", daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.dump()

    def dump(self) -> None:
        import time
        import traceback

        names = {thread.ident: thread.name for thread in threading.enumerate()}
        lines = [f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: every thread's stack"]
        for ident, frame in sys._current_frames().items():
            lines.append(f"Thread {names.get(ident, '?')} ({ident:#x}), most recent call last:")
            lines.extend(entry.rstrip("\n") for entry in traceback.format_stack(frame))
        self._out.write("\n".join(lines) + "\n\n")
        self._out.flush()

    def close(self) -> None:
        import faulthandler

        self._stop.set()
        self._thread.join()
        faulthandler.disable()
        self._out.close()


class _TritonLogHandler(logging.Handler):
    """llm_deploy's own log records (the batcher's, the engine's) into Triton's server log."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warn" if record.levelno >= logging.WARNING else "info"
        try:
            _log(level, self.format(record))
        except Exception:  # noqa: BLE001 - logging must never take a request down
            self.handleError(record)


def _forward_logging_to_triton() -> None:
    package = logging.getLogger("llm_deploy")
    if not any(isinstance(h, _TritonLogHandler) for h in package.handlers):
        handler = _TritonLogHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def _log(level: str, message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is None:
        print(f"[tensorrt_llm] {message}", file=sys.stderr, flush=True)
        return
    {"info": logger.log_info, "warn": logger.log_warn, "error": logger.log_error}[level](message)
