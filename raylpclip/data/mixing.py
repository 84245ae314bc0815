"""Weighted mixing of several endless batch streams into fixed-size batches. Pure torch/numpy.

Each output batch draws its row counts per source from a multinomial over the weights, so over many
batches source i supplies a fraction weight_i / sum(weights) of the samples, whatever the sources'
sizes: a small curated source with weight 0.5 is repeated (epoch after epoch), a large web source with
weight 0.5 is streamed once. Batches stay exactly `batch_size` rows, which the gathered loss needs.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


class _RowBuffer:
    """Rows of one endless stream of batches, handed out n at a time."""

    def __init__(self, stream: Iterator[dict[str, torch.Tensor]]):
        self.stream = stream
        self.batch: dict[str, torch.Tensor] | None = None
        self.offset = 0

    def _remaining(self) -> int:
        return 0 if self.batch is None else next(iter(self.batch.values())).shape[0] - self.offset

    def take(self, n: int) -> list[dict[str, torch.Tensor]]:
        parts = []
        while n > 0:
            if self._remaining() == 0:
                self.batch, self.offset = next(self.stream), 0
                continue
            k = min(n, self._remaining())
            parts.append({c: v[self.offset:self.offset + k] for c, v in self.batch.items()})
            self.offset += k
            n -= k
        return parts


def mix_batches(streams: Sequence[Iterator[dict[str, torch.Tensor]]], weights: Sequence[float], *,
                batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    if len(streams) != len(weights) or not streams:
        raise ValueError(f"{len(streams)} streams but {len(weights)} weights")
    p = np.asarray(weights, dtype=np.float64)
    if (p <= 0).any():
        raise ValueError(f"mixing weights must be > 0, got {list(weights)}")
    p /= p.sum()
    rng = np.random.default_rng(seed)
    buffers = [_RowBuffer(iter(s)) for s in streams]
    while True:
        counts = rng.multinomial(batch_size, p)
        parts = [part for buf, c in zip(buffers, counts) for part in buf.take(int(c))]
        yield {c: torch.cat([part[c] for part in parts]) for c in parts[0]}
