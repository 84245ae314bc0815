"""A shuffle buffer that turns pieces of any row count into fixed-size batches of tensors, in the
training process, at the cost of two row copies.

Ray Data's local shuffle buffer (`iter_torch_batches(local_shuffle_buffer_size=...)`) builds every
batch by concatenating and taking rows of Arrow blocks before the conversion to tensors. In a Train
worker that work competes with the training step for the worker's cores: `raylpclip bench train`
measured the 1-worker pipeline at 0.87x its compute limit without the buffer and 0.75-0.80x with
Ray's 1,024-row buffer. Here the rows arrive as tensors and the buffer swaps rows in place: each
incoming piece takes random slots of the buffer and the rows it evicts go into the next batch.

The pieces need not be batches. The Train worker hands in Ray Data's blocks as they are, as zero-copy
views of the object store (runtime/data/batch_stream.py), so Ray never concatenates block slices into a
batch first: at 224 px that concatenation held a third of a py-spy profile of a `bench ingest`
Train worker.

Rows move as words, not elements: torch's CPU gather/scatter kernels copy element by element, and a
uint8 image row is 150,528 single-byte elements at 224 px. Seen as int64 words the same rows copy 5-20x
faster. At 224 px the element copies cost ~240 us of CPU per sample, most of a `bench ingest` Train
worker's CPU; as words, ~30 us.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

Batch = dict[str, torch.Tensor]


def shuffled(pieces: Iterable[Batch], *, batch_size: int, capacity: int, seed: int) -> Iterator[Batch]:
    """The rows of `pieces` (dicts of equal-length tensors; any length, the same columns, row shapes and
    dtypes in every piece) in batches of `batch_size`, in random order through a buffer of
    max(capacity, batch_size) rows; the same seed and pieces give the same batches. capacity 0: no
    shuffling, the rows in their order.

    Every row comes out once: the buffer fills from the first pieces (nothing is yielded meanwhile),
    then each incoming row evicts a random row into the batch being built, and at the end the buffer
    drains in random order. The last partial batch is dropped, as iter_torch_batches(drop_last=True)
    would drop it. Each batch is a fresh tensor the caller owns."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = _Batches(batch_size)
    if capacity == 0:
        for piece in pieces:
            yield from batches.take(piece, torch.arange(_rows(piece)))
        return
    gen = torch.Generator().manual_seed(seed)
    buffer = _Buffer(max(capacity, batch_size))
    for piece in pieces:
        start, end = buffer.fill(piece), _rows(piece)
        while start < end:
            # Up to a buffer's worth of the piece's rows evict as many distinct random rows.
            n = min(end - start, buffer.capacity)
            slots = torch.randperm(buffer.capacity, generator=gen)[:n]
            yield from batches.take(buffer.cols, slots)
            buffer.put(slots, piece, start, start + n)
            start += n
    if buffer.cols is not None:
        yield from batches.take(buffer.cols, torch.randperm(buffer.size, generator=gen))


class _Buffer:
    """`capacity` rows per column, allocated from the first piece and filled in arrival order."""

    def __init__(self, capacity: int):
        self.capacity, self.size = capacity, 0
        self.cols: Batch | None = None

    def fill(self, piece: Batch) -> int:
        """Copy the piece's first rows into the free rows; returns how many rows it took."""
        if self.size == self.capacity:
            return 0
        if self.cols is None:
            self.cols = _empty_rows(piece, self.capacity)
        n = min(self.capacity - self.size, _rows(piece))
        for k, v in self.cols.items():
            _words(v)[self.size:self.size + n].copy_(_words(piece[k][:n]))
        self.size += n
        return n

    def put(self, slots: torch.Tensor, piece: Batch, start: int, end: int) -> None:
        for k, v in self.cols.items():
            _words(v).index_copy_(0, slots, _words(piece[k][start:end]))


class _Batches:
    """The batch being built: rows gathered into it until it holds `size`, then handed out."""

    def __init__(self, size: int):
        self.size, self.filled = size, 0
        self.cols: Batch | None = None

    def take(self, source: Batch, rows: torch.Tensor) -> Iterator[Batch]:
        """Gather `source`'s `rows`, in that order, batch after batch; each full batch comes out (a
        partial one waits for the next call)."""
        start = 0
        while start < len(rows):
            if self.cols is None:
                self.cols = _empty_rows(source, self.size)
            n = min(len(rows) - start, self.size - self.filled)
            for k, v in self.cols.items():
                torch.index_select(_words(source[k]), 0, rows[start:start + n],
                                   out=_words(v)[self.filled:self.filled + n])
            start, self.filled = start + n, self.filled + n
            if self.filled == self.size:
                out, self.cols, self.filled = self.cols, None, 0
                yield out


def _empty_rows(like: Batch, n: int) -> Batch:
    """Uninitialised tensors of `n` rows with `like`'s columns, row shapes and dtypes."""
    return {k: torch.empty((n, *v.shape[1:]), dtype=v.dtype) for k, v in like.items()}


def _words(t: torch.Tensor) -> torch.Tensor:
    """A tensor's rows as (rows, words) of the widest integer type its row bytes divide into; the
    buffer, the batches and the pieces have the same row shapes and dtypes, so their words match."""
    flat = t.reshape(len(t), -1)  # a view when the rows are contiguous, else a copy (read from only)
    word = _word_dtype(flat.shape[1] * t.element_size())
    try:
        return flat.view(word)
    except RuntimeError:  # rows that start at an odd offset into their storage: a fresh copy does not
        return flat.clone().view(word)


def _word_dtype(row_bytes: int) -> torch.dtype:
    for dtype in (torch.int64, torch.int32, torch.int16):
        if row_bytes % dtype.itemsize == 0:
            return dtype
    return torch.uint8


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))
