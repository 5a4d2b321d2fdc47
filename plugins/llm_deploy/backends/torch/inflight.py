"""In-flight (continuous) batching over a LlamaEngine, the scheduling TensorRT-LLM's batch manager does.

One background thread owns the engine. Each turn of its loop it

1. drops requests that were cancelled,
2. admits queued requests into free KV-cache slots (prefill, first token out at once),
3. runs ONE batched decode step for every active request, whatever its length, and
4. retires the requests that hit their end token or token budget, freeing their slots.

So a new request starts as soon as a slot is free instead of waiting for a whole batch to drain,
and a short request leaves the batch without holding the others back.

On a GPU whose engine keeps greedy tokens on the device (``overlap``), a step is launched before
the previous step's tokens are handed out: the host's share of a turn (callbacks, retiring
requests, the next step's inputs) then runs while the GPU computes, instead of between two steps.

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
    launched: int = 0  # tokens that passes launched so far produce for it, handed out or not
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
    # With overlapped steps a pass's time is what the loop spent launching it and then waiting
    # for its tokens; the GPU time that ran behind the callbacks is in no counter.
    # decode_rows / steps is the mean batch of a decode step.
    prefill_s: float = 0.0
    decode_s: float = 0.0
    emit_s: float = 0.0
    decode_rows: int = 0


@dataclass
class _Pass:
    """A model pass launched and not yet handed out."""

    seqs: list[_Sequence]
    tokens: Callable[[], list[int]]  # the greedy token of each of seqs, once the pass has run
    decode: bool
    model_s: float  # host time spent launching it (all of the pass, when it ran at once)


@dataclass
class _Pending:
    """Work handed to the loop by other threads, taken in one go under the lock."""

    admit: list[_Sequence] = field(default_factory=list)
    fail: list[tuple[_Sequence, str]] = field(default_factory=list)


class InflightBatcher:
    def __init__(self, engine: LlamaEngine, max_batch_size: int, max_input_len: int, max_output_len: int, *,
                 overlap: bool | None = None) -> None:
        """``overlap``: launch each decode step before handing out the last one's tokens (None:
        whenever the engine keeps greedy tokens on the device, i.e. graphed varlen decode)."""
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
        if overlap is None:
            overlap = engine.greedy_on_device
        if overlap and not engine.greedy_on_device:
            raise ValueError("overlap needs an engine that keeps greedy tokens on the device (graphed varlen decode)")
        self.overlap = overlap
        # Passes left queued on the device while the host hands out the one before: with one, the
        # GPU runs step N+1 while step N's tokens go to their requests. A row that ended on its
        # end token at step N rides step N+1 for nothing; one ending on its budget never does.
        self._lookahead = 1 if overlap else 0
        self._launched: deque[_Pass] = deque()
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
                self._launched.clear()
                for seq in pending.admit:
                    self._finish(seq, error)
                self._fail_active(error)
        self._fail_everything(STOPPED)
        logger.info("in-flight batcher stopped: %s", self.stats)

    def _wait_for_work(self) -> _Pending | None:
        """Block until there is something to do; take cancellations and admissions. None = stop."""
        with self._cond:
            # (_launched is the loop's own: a pass still out when its last request ended is collected.)
            while not (self._stopping or self._queue or self._active or self._cancel_ids or self._launched):
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
        if pending.admit:
            self._admit(pending.admit)
        rows = self._decodable()
        if rows:
            self._decode_step(rows)
        # With nothing launched this turn, nothing would follow the passes still out: collect them.
        self._hand_out(keep=self._lookahead if rows else 0)

    def _admit(self, seqs: list[_Sequence]) -> None:
        """Prefill the requests admitted this turn: one batched pass where the engine can."""
        with self._cond:
            for seq in seqs:
                seq.slot = heapq.heappop(self._free_slots)
                self._active[seq.slot] = seq
            self._counters.max_active_seen = max(self._counters.max_active_seen, len(self._active))
        if len(seqs) > 1 and self.engine.batched_prefill:
            try:
                self._launch(seqs, self._prefill_pass, decode=False)
                return
            except Exception:  # noqa: BLE001 - retried one by one, so only a bad request fails
                logger.exception("batched prefill of %d requests failed; prefilling them one by one", len(seqs))
        for seq in seqs:
            try:
                self._launch([seq], self._prefill_pass, decode=False)
            except Exception as exc:  # noqa: BLE001 - reported to the request's caller
                logger.exception("prefill failed for request %s", seq.request_id)
                self._finish(seq, f"prefill failed: {exc}")

    def _prefill_pass(self, seqs: list[_Sequence]) -> Callable[[], list[int]]:
        slots, prompts = [s.slot for s in seqs], [s.request.input_ids for s in seqs]
        if self.overlap:
            return self.engine.prefill_greedy(slots, prompts).result
        if len(seqs) == 1:
            tokens = _greedy(self.engine.prefill(slots[0], prompts[0])[None])
        else:
            tokens = _greedy(self.engine.prefill_many(slots, prompts))
        return lambda: tokens

    def _decodable(self) -> list[_Sequence]:
        """Requests with a token yet to come that no launched pass will produce; in slot order,
        which keeps a full batch's cache rows consecutive (the engine reads them as a view)."""
        with self._cond:
            rows = [s for s in self._active.values()
                    if not s.finished and 0 < s.launched < s.request.max_new_tokens]
        return sorted(rows, key=lambda seq: seq.slot)

    def _decode_step(self, rows: list[_Sequence]) -> None:
        if self._step_delay_s:
            time.sleep(self._step_delay_s)
        try:
            self._launch(rows, self._decode_pass, decode=True)
        except Exception as exc:  # noqa: BLE001 - only this step's requests are affected
            self._fail_pass(rows, exc, decode=True)

    def _decode_pass(self, rows: list[_Sequence]) -> Callable[[], list[int]]:
        slots = [s.slot for s in rows]
        if self.overlap:
            return self.engine.decode_greedy(slots).result
        tokens = _greedy(self.engine.decode(slots, [s.last_token for s in rows]))
        return lambda: tokens

    def _launch(self, seqs: list[_Sequence], launch: Callable[[list[_Sequence]], Callable[[], list[int]]], *,
                decode: bool) -> None:
        """Launch one model pass (it runs at once without overlap), then hand out the passes
        before it, keeping ``_lookahead`` of them queued on the device."""
        started = time.perf_counter()
        tokens = launch(seqs)
        for seq in seqs:
            seq.launched += 1
        self._launched.append(_Pass(seqs, tokens, decode, time.perf_counter() - started))
        self._hand_out(keep=self._lookahead)

    def _hand_out(self, keep: int) -> None:
        """Collect the oldest launched passes' tokens (waiting for them if need be) and emit them."""
        while len(self._launched) > keep:
            done = self._launched.popleft()
            started = time.perf_counter()
            try:
                tokens = done.tokens()
            except Exception as exc:  # noqa: BLE001 - an asynchronous failure of that pass
                self._fail_pass(done.seqs, exc, decode=done.decode)
                continue
            self._emit_timed(done, tokens, done.model_s + time.perf_counter() - started)

    def _fail_pass(self, seqs: list[_Sequence], exc: Exception, *, decode: bool) -> None:
        what = "decode step" if decode else "prefill"
        logger.exception("%s failed for %d requests", what, len(seqs), exc_info=exc)
        for seq in seqs:
            self._finish(seq, f"{what} failed: {exc}")

    def _emit_timed(self, done: _Pass, tokens: list[int], model_s: float) -> None:
        """Emit one model pass's tokens, then count the pass and the callbacks."""
        emitting = time.perf_counter()
        for seq, token in zip(done.seqs, tokens):
            self._emit(seq, token)
        with self._cond:
            counters = self._counters
            if done.decode:
                counters.steps += 1
                counters.decode_rows += len(done.seqs)
                counters.decode_s += model_s
            else:
                counters.prefills += len(done.seqs)
                counters.prefill_s += model_s
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
