"""A shuffle buffer over batches of tensors, in the training process, at the cost of two row copies.

Ray Data's local shuffle buffer (`iter_torch_batches(local_shuffle_buffer_size=...)`) builds every
batch by concatenating and taking rows of Arrow blocks before the conversion to tensors. In a Train
worker that work competes with the training step for the worker's cores: `raylpclip bench train`
measured the 1-worker pipeline at 0.87x its compute limit without the buffer and 0.75-0.80x with
Ray's 1,024-row buffer. Here the batches arrive as tensors and the buffer swaps rows in place: each
incoming batch takes random slots of the buffer and the rows it evicts leave as the next batch.

Rows move as words, not elements: torch's CPU gather/scatter kernels copy element by element, and a
uint8 image row is 150,528 single-byte elements at 224 px. Seen as int64 words the same rows copy 5-20x
faster. At 224 px the element copies cost ~240 us of CPU per sample, most of a `bench ingest` Train
worker's CPU; as words, ~30 us.
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
        out = _take(buffer, slots)
        for k, v in buffer.items():
            _words(v).index_copy_(0, slots, _words(batch[k].contiguous()))
        yield out
    rest = buffer if buffer is not None else (_cat(filling) if filling else None)
    if rest is None:
        return
    order = torch.randperm(_rows(rest), generator=gen)
    for start in range(0, len(order) - size + 1, size):
        yield _take(rest, order[start:start + size])


def _take(buffer: Batch, rows: torch.Tensor) -> Batch:
    """Copies of the buffer's `rows`, each tensor keeping its dtype and row shape."""
    return {k: _words(v).index_select(0, rows).view(v.dtype).view(len(rows), *v.shape[1:]) for k, v in buffer.items()}


def _words(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as (rows, words) of the widest integer type its row bytes divide
    into; the buffer and the batches have the same row shapes and dtypes, so their words match."""
    flat = t.view(len(t), -1)
    word = _word_dtype(flat.shape[1] * t.element_size())
    try:
        return flat.view(word)
    except RuntimeError:  # a batch that starts at an odd offset into its storage: a fresh copy does not
        return flat.clone().view(word)


def _word_dtype(row_bytes: int) -> torch.dtype:
    for dtype in (torch.int64, torch.int32, torch.int16):
        if row_bytes % dtype.itemsize == 0:
            return dtype
    return torch.uint8


def _cat(batches: list[Batch]) -> Batch:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))
