"""data/shuffle.shuffled: every row once, rows kept whole, seeded, actually mixed."""

from __future__ import annotations

import itertools

import pytest
import torch

from raylpclip.data.shuffle import shuffled


def stream(n_batches: int, size: int):
    """Batches whose rows carry their index in every column (so torn rows are visible)."""
    for i in range(n_batches):
        ids = torch.arange(i * size, (i + 1) * size)
        yield {"id": ids, "image": ids.view(-1, 1, 1).expand(-1, 2, 3).to(torch.uint8).clone(), "twice": 2 * ids}


def ids_of(batches) -> list[int]:
    return list(itertools.chain.from_iterable(b["id"].tolist() for b in batches))


@pytest.mark.parametrize("capacity", [1, 8, 10, 64, 1000])
def test_every_row_comes_out_once_whole_in_full_batches(capacity):
    out = list(shuffled(stream(10, 4), batch_size=4, capacity=capacity, seed=3))
    assert sorted(ids_of(out)) == list(range(40))
    for b in out:
        assert len(b["id"]) == 4
        assert torch.equal(b["twice"], 2 * b["id"])
        assert torch.equal(b["image"][:, 1, 2], b["id"].to(torch.uint8))


def test_a_stream_shorter_than_the_buffer_still_comes_out_shuffled():
    out = list(shuffled(stream(3, 4), batch_size=4, capacity=100, seed=0))  # never fills: drained at the end
    assert len(out) == 3 and sorted(ids_of(out)) == list(range(12)) and ids_of(out) != list(range(12))


def test_the_same_seed_gives_the_same_order_and_another_seed_another():
    a = ids_of(shuffled(stream(20, 8), batch_size=8, capacity=64, seed=7))
    assert a == ids_of(shuffled(stream(20, 8), batch_size=8, capacity=64, seed=7))
    assert a != ids_of(shuffled(stream(20, 8), batch_size=8, capacity=64, seed=8))


def test_rows_travel_across_batches():
    out = ids_of(shuffled(stream(50, 8), batch_size=8, capacity=64, seed=0))
    assert out != list(range(400))
    # The first batch out is drawn from the whole filled buffer (64 rows = 8 batches), not batch 0.
    first = out[:8]
    assert max(first) >= 8
    # A buffer of 64 delays a row by at most the stream's length, and mixes it by ~64 places on average.
    displacement = sum(abs(pos - row) for pos, row in enumerate(out)) / len(out)
    assert 16 < displacement < 200


def test_empty_stream_yields_nothing():
    assert list(shuffled(iter([]), batch_size=4, capacity=16, seed=0)) == []


def reference_order(batches: list[dict], *, capacity: int, seed: int) -> list[dict]:
    """The buffer's algorithm with plain advanced indexing (element by element): the order to match."""
    gen, size = torch.Generator().manual_seed(seed), len(next(iter(batches[0].values())))
    fill = -(-max(capacity, size) // size)
    buffer = {k: torch.cat([b[k] for b in batches[:fill]]) for k in batches[0]}
    out = []
    for batch in batches[fill:]:
        slots = torch.randperm(len(buffer["id"]), generator=gen)[:size]
        out.append({k: v[slots] for k, v in buffer.items()})
        for k, v in buffer.items():
            v[slots] = batch[k]
    order = torch.randperm(len(buffer["id"]), generator=gen)
    out += [{k: v[order[s:s + size]] for k, v in buffer.items()} for s in range(0, len(order) - size + 1, size)]
    return out


def typed_stream(n_batches: int, size: int, *, offset: bool = False):
    """Columns of every row width the word copies handle: 8-byte multiples (int64 words), 4, 2 and odd
    byte counts, bool, float16; with `offset`, each tensor a view one element into a bigger storage."""
    gen = torch.Generator().manual_seed(1)
    for i in range(n_batches):
        cols = {"id": torch.arange(i * size, (i + 1) * size),
                "image": torch.randint(0, 255, (size, 3, 8, 8), generator=gen).to(torch.uint8),
                "odd": torch.randint(0, 255, (size, 3, 5, 5), generator=gen).to(torch.uint8),
                "pair": torch.randint(0, 255, (size, 2), generator=gen).to(torch.uint8),
                "words": torch.randint(0, 9, (size, 3), generator=gen).to(torch.int32),
                "half": torch.randn(size, 7, generator=gen).to(torch.float16),
                "flag": torch.rand(size, generator=gen) > 0.5}
        if offset:
            cols = {k: torch.cat([v.reshape(-1)[:1], v.reshape(-1)])[1:].view(v.shape) for k, v in cols.items()}
        yield cols


@pytest.mark.parametrize("offset", [False, True])
def test_word_copies_give_exactly_the_element_by_element_result(offset):
    batches = list(typed_stream(12, 4, offset=offset))
    if offset:
        assert batches[0]["image"].storage_offset() == 1
    got = list(shuffled(iter(batches), batch_size=4, capacity=16, seed=5))
    want = reference_order([{k: v.clone() for k, v in b.items()} for b in batches], capacity=16, seed=5)
    assert len(got) == len(want) == 12
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape and torch.equal(g[k], w[k]), k


def pieces(sizes: list[int]):
    """Pieces of the given row counts (Ray Data's blocks come in any size), rows numbered across them."""
    start = 0
    for n in sizes:
        ids = torch.arange(start, start + n)
        start += n
        yield {"id": ids, "image": ids.view(-1, 1, 1).expand(-1, 2, 3).to(torch.uint8).clone(), "twice": 2 * ids}


SIZES = [1, 5, 3, 17, 2, 9, 4, 30, 1, 6]  # 78 rows


@pytest.mark.parametrize("capacity", [0, 1, 7, 10, 64, 1000])
def test_pieces_of_any_size_come_out_in_full_batches_every_row_once(capacity):
    out = list(shuffled(pieces(SIZES), batch_size=4, capacity=capacity, seed=2))
    assert len(out) == 78 // 4  # the last 2 rows make no full batch: dropped, as drop_last would
    got = ids_of(out)
    assert len(set(got)) == len(got) and set(got) <= set(range(78))
    for b in out:
        assert len(b["id"]) == 4
        assert torch.equal(b["twice"], 2 * b["id"])
        assert torch.equal(b["image"][:, 1, 2], b["id"].to(torch.uint8))
    if capacity == 0:
        assert got == list(range(76))  # no buffer: the rows in their order, cut into batches
    else:
        assert got != list(range(76))


def test_pieces_and_equal_batches_of_the_same_rows_mix_alike():
    """How the rows are cut into pieces does not change what a buffer of 64 does to the order."""
    by_pieces = ids_of(shuffled(pieces([3, 61, 8, 100, 1, 227]), batch_size=8, capacity=64, seed=0))
    displacement = sum(abs(pos - row) for pos, row in enumerate(by_pieces)) / len(by_pieces)
    assert len(by_pieces) == 400 and by_pieces[:8] != list(range(8)) and 16 < displacement < 200


def test_batches_are_fresh_tensors_not_views_of_the_pieces_or_the_buffer():
    source = list(pieces([8, 8, 8, 8]))
    out = list(shuffled(iter(source), batch_size=4, capacity=8, seed=1))
    before = [b["id"].clone() for b in out]
    for piece in source:
        piece["id"].fill_(-1)
    assert all(torch.equal(b["id"], was) for b, was in zip(out, before))
    storages = {b["id"].untyped_storage().data_ptr() for b in out}
    assert len(storages) == len(out)


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        list(shuffled(pieces([4]), batch_size=0, capacity=8, seed=0))
