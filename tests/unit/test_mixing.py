"""Weighted mixing of endless batch streams."""

from __future__ import annotations

import itertools

import pytest
import torch

from raylpclip.data.mixing import mix_batches


def _stream(source: int, batch: int):
    """Endless batches whose rows say which source and which position they came from."""
    for start in itertools.count(0, batch):
        idx = torch.arange(start, start + batch)
        yield {"source": torch.full((batch,), source), "index": idx}


def test_batches_are_exact_size_and_shares_follow_weights():
    mixed = mix_batches([_stream(0, 7), _stream(1, 5)], [3.0, 1.0], batch_size=32, seed=0)
    batches = list(itertools.islice(mixed, 200))
    assert all(b["source"].shape == (32,) for b in batches)
    share = torch.cat([b["source"] for b in batches]).float().mean().item()
    assert share == pytest.approx(0.25, abs=0.01)


def test_each_source_is_consumed_in_order_without_loss_or_repeat():
    mixed = mix_batches([_stream(0, 7), _stream(1, 5)], [1.0, 1.0], batch_size=16, seed=3)
    rows = torch.cat([torch.stack([b["source"], b["index"]], 1) for b in itertools.islice(mixed, 50)])
    for source in (0, 1):
        idx = rows[rows[:, 0] == source, 1]
        assert torch.equal(idx, torch.arange(idx.numel()))


def test_same_seed_same_mix():
    a = mix_batches([_stream(0, 4), _stream(1, 4)], [1, 2], batch_size=8, seed=5)
    b = mix_batches([_stream(0, 4), _stream(1, 4)], [1, 2], batch_size=8, seed=5)
    for x, y in itertools.islice(zip(a, b), 20):
        assert torch.equal(x["source"], y["source"])


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="2 streams but 1 weights"):
        next(mix_batches([_stream(0, 4), _stream(1, 4)], [1.0], batch_size=8, seed=0))
    with pytest.raises(ValueError, match="> 0"):
        next(mix_batches([_stream(0, 4), _stream(1, 4)], [1.0, 0.0], batch_size=8, seed=0))
