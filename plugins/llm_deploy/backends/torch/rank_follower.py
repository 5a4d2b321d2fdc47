"""A follower rank of a tensor-parallel twin engine, as its own process (``ranks.py``).

    python -m llm_deploy.backends.torch.rank_follower --engine-dir D --rank R --world-size N \\
        --address 127.0.0.1:PORT --max-batch-size B --max-seq-len L

Loads rank R's shard, joins the group rank 0 hosts at the address, and makes every engine call
rank 0 broadcasts until it says stop. Under mpirun the rank and size may come from Open MPI's
environment instead (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-dir", required=True, type=Path)
    parser.add_argument("--rank", type=int, default=int(os.environ.get("OMPI_COMM_WORLD_RANK", -1)))
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("OMPI_COMM_WORLD_SIZE", 0)))
    parser.add_argument("--address", required=True, help="host:port where rank 0 hosts the group")
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--max-seq-len", type=int, required=True)
    parser.add_argument("--device", default="auto", help="auto: cuda:<rank> when there are GPUs, else cpu")
    args = parser.parse_args(argv)
    if not 1 <= args.rank < args.world_size:
        parser.error(f"--rank {args.rank} must be a follower's rank, 1 to world size - 1 ({args.world_size - 1})")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{args.rank} %(name)s %(message)s")

    import torch

    from llm_deploy.backends.torch import ranks
    from llm_deploy.backends.torch.build_engine import ENGINE_CONFIG
    from llm_deploy.backends.torch.llama import LlamaEngine

    config = json.loads((args.engine_dir / ENGINE_CONFIG).read_text())
    device = ranks.device_of(args.rank, args.device)
    if device.type == "cpu":
        torch.set_num_threads(ranks.threads_per_rank(args.world_size))
    engine = LlamaEngine.load(args.engine_dir, dtype=getattr(torch, config["dtype"]), device=device,
                              max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                              rank=args.rank, all_reduce=ranks.all_reduce)
    ranks.join(args.rank, args.world_size, args.address, device)
    try:
        calls = ranks.follow(engine)
    finally:
        ranks.leave()
    logging.getLogger(__name__).info("rank %d done after %d calls", args.rank, calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
