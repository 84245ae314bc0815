"""Multi-process gloo tests' common part: spawn `worker` as N ranks on a free loopback port, each saving
its results to `<out_dir>/rank<r>.pt`, and load them back in rank order."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, nprocs: int, out_dir: Path, *, leading: tuple = ()) -> list[dict]:
    """mp.spawn(worker, args=(*leading, port, str(out_dir))). One retry on a fresh port: the port is free
    when chosen but rank 0 binds it later, and in the full suite other processes (the shared Ray
    instance's) open ports meanwhile; a fresh-clone run once saw rank 0 abort there while the module alone
    passed 6 runs of 6. A second failure fails the test."""
    for attempt in (1, 2):
        try:
            mp.spawn(worker, args=(*leading, free_port(), str(out_dir)), nprocs=nprocs, join=True)
            break
        except mp.ProcessExitedException:
            if attempt == 2:
                raise
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(nprocs)]
