"""The ranks of a tensor-parallel twin engine: one process each, joined by torch.distributed.

Rank 0 leads. It runs the in-flight batcher, and before each engine call (prefill, decode,
release) it broadcasts the call to the other ranks; each follower makes the same call on its own
shard (``follow``), so all ranks step together and every all-reduce inside the forward pass meets
its peers. That is the split launch_triton_server.py --world_size sets up for TensorRT-LLM: the
leader serves requests, the other ranks take part in every step. Gloo on CPU, NCCL on GPUs.

A rank that dies breaks the collective its peers are in: gloo raises at once on the others
(the connection is gone), so the leader's step fails and says which rank is missing.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a rank runs, not by the steps that only launch ranks
    import torch

logger = logging.getLogger(__name__)

STOP = "stop"
# Where rank 0 hosts the group (host:port): set by start_server for the server and every rank.
ADDRESS_ENV = "LLM_DEPLOY_TP_ADDRESS"
# How long a rank waits for its peers to join, and for a collective: a rank that never comes
# fails the start instead of hanging it.
JOIN_TIMEOUT_S = float(os.environ.get("LLM_DEPLOY_TP_JOIN_TIMEOUT_S") or 120)


def threads_per_rank(world_size: int) -> int:
    """Torch threads for one rank on a CPU host: the cores shared out, as they run at once."""
    return max(1, (os.cpu_count() or 1) // world_size)


def device_of(rank: int, name: str = "auto") -> torch.device:
    """A follower's device: "auto" is its own GPU (cuda:<rank>) when there are GPUs, else the CPU."""
    import torch

    if name != "auto":
        return torch.device(name)
    return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")


def join(rank: int, world_size: int, address: str, device: torch.device) -> list[tuple[str, int]]:
    """Join the group of ``world_size`` ranks that rank 0 hosts at ``address`` (host:port); every
    rank's (host, pid), rank by rank, so that a rank that dies can be named."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    logger.info("rank %d/%d joining at %s (%s)", rank, world_size, address, backend)
    dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
    peers: list[Any] = [None] * world_size
    # The kernel's host name, not Airflow's (hosts.py): rank 0 runs in a python-backend stub,
    # which has no Airflow configuration to read.
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    return [tuple(peer) for peer in peers]


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(tensor)


def _broadcast(call: tuple[str, tuple] | None) -> tuple[str, tuple]:
    import torch.distributed as dist

    box: list[Any] = [call]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LeaderEngine:
    """Rank 0's engine: a LlamaEngine whose every call the followers make too.

    Reads (``arch``, ``length``, ``batched_prefill`` ...) go to rank 0's own shard; the calls
    that change the KV cache are broadcast first.
    """

    def __init__(self, engine: Any, peers: list[tuple[str, int]]) -> None:
        self._engine = engine
        self.peers = peers  # (host, pid) of every rank, as ``join`` returned them
        self.world_size = len(peers)
        # One call at a time: the batcher's thread steps, and a stopping server's finalize may
        # release slots from another; two broadcasts at once would cross on the wire.
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def greedy_on_device(self) -> bool:
        # Ranks step eagerly, and every call must go through _together: never the engine's own
        # decode_greedy, which __getattr__ would hand out unbroadcast.
        return False

    def _together(self, op: str, *args: Any) -> Any:
        with self._lock:
            try:
                _broadcast((op, args))
                return getattr(self._engine, op)(*args)
            except Exception as exc:
                gone = self.gone()
                if not gone:
                    raise  # e.g. the call's own inputs refused, on every rank alike
                raise RuntimeError(f"a tensor-parallel rank is gone: {', '.join(gone)} ({op}: {exc}); "
                                   f"all {self.world_size} ranks must run for the engine to step") from exc

    def gone(self) -> list[str]:
        """The ranks of this host whose process is no longer there, as "rank R (pid P)"."""
        from llm_deploy import processes

        here = socket.gethostname()
        return [f"rank {rank} (pid {pid})" for rank, (host, pid) in enumerate(self.peers)
                if rank and host == here and not processes.is_alive(pid)]

    def prefill(self, slot: int, token_ids: list[int]) -> torch.Tensor:
        return self._together("prefill", slot, token_ids)

    def prefill_many(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        return self._together("prefill_many", slots, prompts)

    def decode(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        return self._together("decode", slots, tokens)

    def release(self, slot: int) -> None:
        self._together("release", slot)

    def stop_followers(self) -> None:
        """Tell the other ranks to return from ``follow``; they leave the group after it."""
        with self._lock:
            _broadcast((STOP, ()))


def follow(engine: Any, on_call: Callable[[str], None] | None = None) -> int:
    """Make every call the leader broadcasts on this rank's ``engine`` until it says stop; the
    number of calls made. A call that fails here fails on the leader too (same inputs, same
    checks), so the error is logged and the rank keeps following."""
    calls = 0
    while True:
        op, args = _broadcast(None)
        if op == STOP:
            return calls
        calls += 1
        if on_call is not None:
            on_call(op)
        try:
            getattr(engine, op)(*args)
        except ValueError:
            logger.exception("%s failed on this rank as on the leader", op)


def follower_argv(engine_dir: Path, rank: int, world_size: int, address: str, *, max_batch_size: int,
                  max_seq_len: int, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "llm_deploy.backends.torch.rank_follower", "--engine-dir", str(engine_dir),
            "--rank", str(rank), "--world-size", str(world_size), "--address", address,
            "--max-batch-size", str(max_batch_size), "--max-seq-len", str(max_seq_len), "--device", device]


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@contextlib.contextmanager
def lead(engine_dir: Path, world_size: int, *, dtype: torch.dtype, max_batch_size: int,
         max_seq_len: int) -> Iterator[LeaderEngine]:
    """This process as rank 0 of a sharded engine, the other ranks as child processes of its own
    (verify_engine's run, on CPU); every rank stopped and waited for on the way out."""
    from llm_deploy import processes
    from llm_deploy.backends.torch.llama import LlamaEngine

    address = free_address()
    followers = [subprocess.Popen(follower_argv(engine_dir, rank, world_size, address, max_batch_size=max_batch_size,
                                                max_seq_len=max_seq_len), start_new_session=True)
                 for rank in range(1, world_size)]
    leader = None
    try:
        engine = LlamaEngine.load(engine_dir, dtype=dtype, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                                  rank=0, all_reduce=all_reduce)
        leader = LeaderEngine(engine, join(0, world_size, address, engine.device))
        yield leader
    finally:
        if leader is not None:
            with contextlib.suppress(Exception):  # a rank already gone: the stop below ends the rest
                leader.stop_followers()
        leave()
        for follower in followers:
            try:
                follower.wait(timeout=30)
            except subprocess.TimeoutExpired:
                processes.stop_group(follower.pid, grace_s=5)
                follower.wait()
        failed = [(rank, f.returncode) for rank, f in enumerate(followers, 1) if f.returncode]
        if failed and leader is not None:
            logger.warning("ranks that exited with an error: %s", failed)
