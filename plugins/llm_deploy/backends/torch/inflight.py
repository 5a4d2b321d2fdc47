"""In-flight (continuous) batching over a LlamaEngine, the scheduling TensorRT-LLM's batch manager does.

One background thread owns the engine. Each turn of its loop it

1. drops requests that were cancelled,
2. admits queued requests into free KV-cache slots (prefill, first token out at once),
3. runs ONE batched decode step for every active request, whatever its length, and
4. retires the requests that hit their end token or token budget, freeing their slots.

So a new request starts as soon as a slot is free instead of waiting for a whole batch to drain,
and a short request leaves the batch without holding the others back.

Callbacks run on the batcher thread (only ``stop`` may deliver the final ``on_done`` of requests
the thread did not get to) and must be quick: a slow callback stalls every request in flight.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llm_deploy.backends.torch.llama import LlamaEngine

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
STOPPED = "the in-flight batcher stopped before this request finished"
# A fault to inject: this many milliseconds added to every decode step, which makes a server
# measurably slower with the same tokens (the promotion gate's tests refuse such a candidate).
STEP_DELAY_ENV = "LLM_DEPLOY_TWIN_STEP_DELAY_MS"


@dataclass
class GenerationRequest:
    request_id: str
    input_ids: list[int]
    max_new_tokens: int
    # Stop once this token is generated; like TensorRT-LLM the end token itself is reported.
    end_id: int | None
    on_token: Callable[[int], None]
    # Called exactly once: None on success, the error text on failure or cancellation.
    on_done: Callable[[str | None], None]


@dataclass
class _Sequence:
    """A request's life inside the batcher."""

    request: GenerationRequest
    slot: int = -1
    generated: int = 0
    last_token: int = -1
    finished: bool = False

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass
class _Counters:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    steps: int = 0
    prefills: int = 0
    generated_tokens: int = 0
    max_active_seen: int = 0
    # Where the loop's time goes (seconds): the model's prefills and decode steps, and the
    # callbacks that hand tokens to their requests (in a server: building and sending responses).
    # decode_rows / steps is the mean batch of a decode step.
    prefill_s: float = 0.0
    decode_s: float = 0.0
    emit_s: float = 0.0
    decode_rows: int = 0


@dataclass
class _Pending:
    """Work handed to the loop by other threads, taken in one go under the lock."""

    admit: list[_Sequence] = field(default_factory=list)
    fail: list[tuple[_Sequence, str]] = field(default_factory=list)


class InflightBatcher:
    def __init__(self, engine: LlamaEngine, max_batch_size: int, max_input_len: int, max_output_len: int) -> None:
        if not 1 <= max_batch_size <= engine.max_batch_size:
            raise ValueError(
                f"max_batch_size={max_batch_size} must be between 1 and the engine's "
                f"{engine.max_batch_size} KV-cache slots"
            )
        if max_input_len < 1 or max_output_len < 1:
            raise ValueError(f"max_input_len ({max_input_len}) and max_output_len ({max_output_len}) must be >= 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_input_len = max_input_len
        self.max_output_len = max_output_len
        self._step_delay_s = float(os.environ.get(STEP_DELAY_ENV) or 0) / 1000
        if self._step_delay_s:
            logger.warning("%s=%s: every decode step is delayed on purpose", STEP_DELAY_ENV, os.environ[STEP_DELAY_ENV])

        # One lock for everything other threads touch; callbacks and engine calls run outside it.
        self._cond = threading.Condition()
        self._queue: deque[_Sequence] = deque()
        self._cancel_ids: set[str] = set()
        self._in_flight_ids: set[str] = set()  # submitted and not yet finished
        self._active: dict[int, _Sequence] = {}
        # A min-heap: the lowest free slot goes out first, whatever order requests finished in.
        # A graphed decode step runs over slots 0..B-1 with B the next power of two above the
        # highest busy slot, so one request left in slot 37 would make every step a batch-64 step.
        self._free_slots = list(range(max_batch_size))
        self._counters = _Counters()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- public API ------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._stopping:
                raise RuntimeError("the in-flight batcher can be started only once")
            self._thread = threading.Thread(target=self._run, name="inflight-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop the loop; every queued or active request fails through its ``on_done``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("in-flight batcher thread still busy after %.1fs; failing its requests anyway", timeout)
        # The thread fails what it holds on its way out; this catches a thread that never started
        # or is stuck in a step. _finish makes sure nobody is told twice.
        self._fail_everything(STOPPED)

    def submit(self, req: GenerationRequest) -> None:
        """Validate and queue ``req``; raises ValueError (and never calls back) if it is refused."""
        self._validate(req)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the in-flight batcher is stopped; it accepts no new requests")
            if req.request_id in self._in_flight_ids:
                raise ValueError(f"request id {req.request_id!r} is already in flight")
            self._in_flight_ids.add(req.request_id)
            self._queue.append(_Sequence(req))
            self._counters.submitted += 1
            self._cond.notify_all()

    def cancel(self, request_id: str) -> None:
        """Fail ``request_id`` with "cancelled" at the next step boundary; unknown ids are ignored."""
        with self._cond:
            self._cancel_ids.add(request_id)
            self._cond.notify_all()

    @property
    def stats(self) -> dict[str, int | float]:
        with self._cond:
            counters = {key: round(value, 6) if isinstance(value, float) else value
                        for key, value in vars(self._counters).items()}
            counters["active"] = len(self._active)
            counters["queued"] = len(self._queue)
            return counters

    # --- validation --------------------------------------------------------------------------

    def _validate(self, req: GenerationRequest) -> None:
        count = len(req.input_ids)
        if count == 0:
            raise ValueError(f"request {req.request_id}: input_ids is empty")
        if count > self.max_input_len:
            raise ValueError(
                f"request {req.request_id}: input of {count} tokens exceeds max_input_len={self.max_input_len}"
            )
        if not 1 <= req.max_new_tokens <= self.max_output_len:
            raise ValueError(
                f"request {req.request_id}: max_new_tokens={req.max_new_tokens} must be between 1 and "
                f"max_output_len={self.max_output_len}"
            )
        if count + req.max_new_tokens > self.engine.max_seq_len:
            raise ValueError(
                f"request {req.request_id}: {count} input + {req.max_new_tokens} new tokens exceed the "
                f"engine's max_seq_len={self.engine.max_seq_len}"
            )
        vocab = self.engine.arch.vocab_size
        bad = [t for t in req.input_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"request {req.request_id}: token ids {bad[:5]} outside the vocabulary [0, {vocab})")

    # --- the scheduling loop -------------------------------------------------------------------

    def _run(self) -> None:
        logger.info("in-flight batcher started: %d slots", self.max_batch_size)
        while True:
            pending = self._wait_for_work()
            if pending is None:
                break
            try:
                self._turn(pending)
            except Exception as exc:  # noqa: BLE001 - a bug in one turn must not take the server down
                logger.exception("in-flight batcher turn failed")
                error = f"internal error in the in-flight batcher: {exc!r}"
                for seq in pending.admit:
                    self._finish(seq, error)
                self._fail_active(error)
        self._fail_everything(STOPPED)
        logger.info("in-flight batcher stopped: %s", self.stats)

    def _wait_for_work(self) -> _Pending | None:
        """Block until there is something to do; take cancellations and admissions. None = stop."""
        with self._cond:
            while not (self._stopping or self._queue or self._active or self._cancel_ids):
                self._cond.wait()
            if self._stopping:
                return None
            pending = _Pending()
            if self._cancel_ids:
                pending.fail = self._take_cancelled()
            while self._queue and len(pending.admit) < len(self._free_slots):
                pending.admit.append(self._queue.popleft())
            return pending

    def _take_cancelled(self) -> list[tuple[_Sequence, str]]:
        ids, self._cancel_ids = self._cancel_ids, set()
        hits = [s for s in self._queue if s.request_id in ids]
        for seq in hits:
            self._queue.remove(seq)
        hits += [s for s in self._active.values() if s.request_id in ids]
        return [(seq, CANCELLED) for seq in hits]

    def _turn(self, pending: _Pending) -> None:
        for seq, error in pending.fail:
            self._finish(seq, error)
        if len(pending.admit) > 1 and self.engine.batched_prefill:
            self._admit_together(pending.admit)
        else:
            for seq in pending.admit:
                self._admit(seq)
        if self._active:
            self._decode_step()

    def _admit_together(self, seqs: list[_Sequence]) -> None:
        """One batched prefill for every request admitted this turn (one CUDA graph on a GPU)."""
        with self._cond:
            for seq in seqs:
                seq.slot = heapq.heappop(self._free_slots)
                self._active[seq.slot] = seq
            self._counters.max_active_seen = max(self._counters.max_active_seen, len(self._active))
        started = time.perf_counter()
        try:
            logits = self.engine.prefill_many([s.slot for s in seqs], [s.request.input_ids for s in seqs])
            tokens = _greedy(logits)
        except Exception:  # noqa: BLE001 - retried one by one, so only a bad request fails
            logger.exception("batched prefill of %d requests failed; prefilling them one by one", len(seqs))
            for seq in seqs:
                with self._cond:
                    del self._active[seq.slot]
                    heapq.heappush(self._free_slots, seq.slot)
                self._admit(seq)
            return
        self._emit_timed(seqs, tokens, started, decode=False)

    def _admit(self, seq: _Sequence) -> None:
        with self._cond:
            seq.slot = heapq.heappop(self._free_slots)
            self._active[seq.slot] = seq
            self._counters.max_active_seen = max(self._counters.max_active_seen, len(self._active))
        started = time.perf_counter()
        try:
            token = _greedy(self.engine.prefill(seq.slot, seq.request.input_ids)[None])[0]
        except Exception as exc:  # noqa: BLE001 - reported to the request's caller
            logger.exception("prefill failed for request %s", seq.request_id)
            self._finish(seq, f"prefill failed: {exc}")
            return
        self._emit_timed([seq], [token], started, decode=False)

    def _decode_step(self) -> None:
        if self._step_delay_s:
            time.sleep(self._step_delay_s)
        with self._cond:
            # Slot order keeps a full batch's cache rows consecutive, which the engine reads as a view.
            batch = sorted(self._active.values(), key=lambda seq: seq.slot)
        started = time.perf_counter()
        try:
            tokens = _greedy(self.engine.decode([s.slot for s in batch], [s.last_token for s in batch]))
        except Exception as exc:  # noqa: BLE001 - only this step's requests are affected
            logger.exception("decode step failed for %d requests", len(batch))
            for seq in batch:
                self._finish(seq, f"decode step failed: {exc}")
            return
        self._emit_timed(batch, tokens, started, decode=True)

    def _emit_timed(self, seqs: list[_Sequence], tokens: list[int], started: float, *, decode: bool) -> None:
        """Emit one model pass's tokens, then count the pass (begun at ``started``) and the callbacks."""
        emitting = time.perf_counter()
        for seq, token in zip(seqs, tokens):
            self._emit(seq, token)
        with self._cond:
            counters = self._counters
            if decode:
                counters.steps += 1
                counters.decode_rows += len(seqs)
                counters.decode_s += emitting - started
            else:
                counters.prefills += len(seqs)
                counters.prefill_s += emitting - started
            counters.emit_s += time.perf_counter() - emitting

    def _emit(self, seq: _Sequence, token: int) -> None:
        """Report one token, then retire the request if that was its last."""
        if seq.finished:
            return
        seq.generated += 1
        seq.last_token = token
        with self._cond:
            self._counters.generated_tokens += 1
        try:
            seq.request.on_token(token)
        except Exception as exc:  # noqa: BLE001 - the caller's bug fails its own request only
            logger.exception("on_token callback failed for request %s", seq.request_id)
            self._finish(seq, f"on_token callback failed: {exc!r}")
            return
        if token == seq.request.end_id or seq.generated >= seq.request.max_new_tokens:
            self._finish(seq, None)

    def _finish(self, seq: _Sequence, error: str | None) -> None:
        """Free the request's slot and tell its owner, exactly once."""
        with self._cond:
            if seq.finished:
                return
            seq.finished = True
            self._in_flight_ids.discard(seq.request_id)
            if self._active.get(seq.slot) is seq:
                del self._active[seq.slot]
                self.engine.release(seq.slot)
                heapq.heappush(self._free_slots, seq.slot)
            if error is None:
                self._counters.completed += 1
            else:
                self._counters.failed += 1
                self._counters.cancelled += error == CANCELLED
        try:
            seq.request.on_done(error)
        except Exception:  # noqa: BLE001 - nothing left to tell the caller
            logger.exception("on_done callback failed for request %s", seq.request_id)

    def _fail_active(self, error: str) -> None:
        with self._cond:
            active = list(self._active.values())
        for seq in active:
            self._finish(seq, error)

    def _fail_everything(self, error: str) -> None:
        with self._cond:
            victims = list(self._queue) + list(self._active.values())
            self._queue.clear()
        for seq in victims:
            self._finish(seq, error)


def _greedy(logits: torch.Tensor) -> list[int]:
    ids = logits.argmax(dim=-1)
    if ids.is_cuda:
        # Wait for the step with the GIL released (tolist() would hold it): the server's response
        # thread sends the previous step's tokens meanwhile.
        torch.cuda.current_stream(ids.device).synchronize()
    return ids.tolist()
