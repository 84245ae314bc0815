"""A shuffle buffer over batches of tensors, in the training process, at the cost of two row copies.

Ray Data's local shuffle buffer (`iter_torch_batches(local_shuffle_buffer_size=...)`) builds every
batch by concatenating and taking rows of Arrow blocks before the conversion to tensors. In a Train
worker that work competes with the training step for the worker's cores: `raylpclip bench train`
measured the 1-worker pipeline at 0.87x its compute limit without the buffer and 0.75-0.80x with
Ray's 1,024-row buffer. Here the batches arrive as tensors and the buffer swaps rows in place: each
incoming batch takes random slots of the buffer and the rows it evicts leave as the next batch.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

Batch = dict[str, torch.Tensor]


def shuffled(batches: Iterable[Batch], *, capacity: int, seed: int) -> Iterator[Batch]:
    """Rows of `batches` (dicts of equal-length tensors, every batch the same size b) in random order
    through a buffer of max(capacity, b) rows; the same seed gives the same order.

    Every row comes out once: the buffer fills from the first batches (nothing is yielded meanwhile),
    then each batch in evicts a random batch's worth, and at the end the buffer drains in random order,
    in batches of b (a last partial batch is dropped, as iter_torch_batches(drop_last=True) would)."""
    gen = torch.Generator().manual_seed(seed)
    filling: list[Batch] = []
    buffer: Batch | None = None
    size = 0
    for batch in batches:
        size = size or _rows(batch)
        if buffer is None:
            filling.append(batch)
            if len(filling) * size >= capacity:
                buffer, filling = _cat(filling), []
            continue
        slots = torch.randperm(_rows(buffer), generator=gen)[:size]
        out = {k: v[slots] for k, v in buffer.items()}  # advanced indexing copies
        for k, v in buffer.items():
            v[slots] = batch[k]
        yield out
    rest = buffer if buffer is not None else (_cat(filling) if filling else None)
    if rest is None:
        return
    order = torch.randperm(_rows(rest), generator=gen)
    for start in range(0, len(order) - size + 1, size):
        idx = order[start:start + size]
        yield {k: v[idx] for k, v in rest.items()}


def _cat(batches: list[Batch]) -> Batch:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))
