"""runtime/train_streams.block_tensors: Ray Data's Arrow blocks as tensors that share their memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from ray.data.block import BlockAccessor

from raylpclip.runtime.data.batch_stream import block_tensors


def block(start: int, n: int) -> pa.Table:
    """A block as a decode actor's output becomes one: a tensor column (Ray's tensor extension type) and ints."""
    ids = np.arange(start, start + n)
    images = (ids.reshape(-1, 1, 1, 1) + np.zeros((1, 3, 4, 4), dtype=np.int64)).astype(np.uint8)
    return BlockAccessor.batch_to_block({"image": images, "label": ids})


def values_address(table: pa.Table, column: str, chunk: int) -> tuple[int, int]:
    array = table.column(column).chunk(chunk)
    data = (array.storage if isinstance(array, pa.ExtensionArray) else array).buffers()[-1]
    return data.address, data.size


def test_each_chunk_becomes_a_piece_whose_tensors_share_the_blocks_memory():
    table = pa.concat_tables([block(0, 5), block(5, 3)])  # two chunks, as Ray's output buffer makes them
    assert table.column("image").num_chunks == 2
    out = list(block_tensors([table]))
    assert [len(p["label"]) for p in out] == [5, 3]
    for i, piece in enumerate(out):
        assert piece["image"].shape[1:] == (3, 4, 4) and piece["image"].dtype == torch.uint8
        assert torch.equal(piece["image"][:, 2, 3, 1].long(), piece["label"])
        for column in ("image", "label"):
            address, size = values_address(table, column, i)
            assert address <= piece[column].data_ptr() < address + size, column  # no copy was made
    assert torch.cat([p["label"] for p in out]).tolist() == list(range(8))


def test_empty_record_batches_give_no_piece():
    table = pa.concat_tables([block(0, 2).slice(0, 0), block(0, 2)])
    assert [len(c) for c in table.column("label").chunks] == [0, 2]
    assert [len(p["label"]) for p in block_tensors([table])] == [2]


def test_a_column_of_python_objects_is_refused_by_name():
    table = BlockAccessor.batch_to_block({"caption": np.array(["a", "b"], dtype=object), "label": np.arange(2)})
    with pytest.raises(TypeError, match="'caption'"):
        list(block_tensors([table]))
