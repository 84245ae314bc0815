"""`bench ingest`'s standard PyTorch route: a `torch.utils.data.DataLoader` with one worker process per
CPU; each worker reads its share of the tar files with `tarfile` and turns batches of rows into tensors
with the very same `BatchDecoder` the Ray actors run (its arguments, `data.jpeg_draft` among them, from
`ingest_inputs.decoder_kwargs`), so the two produce identical columns and differ only in how rows travel."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from raylpclip.bench.ingest_inputs import decoder_kwargs
from raylpclip.bench.rate_meter import Rate, timed_batches
from raylpclip.bench.tar_rows import rows_to_batch, tar_rows
from raylpclip.config import DataConfig
from raylpclip.data.decode import BatchDecoder


def _shuffled(rows: Iterable[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """webdataset's `.shuffle(size)`: a buffer of rows, each new row replacing a randomly drawn one."""
    if size <= 1:
        yield from rows
        return
    buffer: list[dict] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = row
    rng.shuffle(buffer)
    yield from buffer


class TarRows(IterableDataset):
    """Raw sample rows; each DataLoader worker reads every n-th tar of a seeded file order (the split
    webdataset's `split_by_worker` makes) and shuffles rows in its own buffer."""

    def __init__(self, files: Sequence[str], *, shuffle_buffer: int, seed: int):
        self.files, self.shuffle_buffer, self.seed = list(files), shuffle_buffer, seed

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.random.default_rng(self.seed).permutation(len(self.files))
        mine = [self.files[i] for i in order[worker::workers]]
        rows = (row for path in mine for row in tar_rows(path))
        # Each worker holds a share of the buffer: together they hold what the Train worker's buffer does.
        yield from _shuffled(rows, self.shuffle_buffer // workers, np.random.default_rng([self.seed, worker]))


class DecodeCollate:
    """collate_fn: a batch of rows -> BatchDecoder's columns as tensors. Runs in the DataLoader worker;
    each worker builds its own decoder (and augmentation stream) on first use."""

    def __init__(self, **decoder_kwargs):
        self.kwargs = decoder_kwargs
        self.decoder: BatchDecoder | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self.decoder is None:
            info = get_worker_info()
            self.decoder = BatchDecoder(**dict(self.kwargs, seed=self.kwargs["seed"] + (info.id if info else 0)))
        return {name: torch.from_numpy(col) for name, col in self.decoder(rows_to_batch(rows)).items()}


def dataloader(files: Sequence[str], *, data: DataConfig, tokenizer, batch_size: int, workers: int,
               start_method: str = "spawn") -> DataLoader:
    """spawn by default: once Ray runs in this process (the second round on), fork could copy its
    threads' locks mid-use."""
    return DataLoader(
        TarRows(files, shuffle_buffer=data.shuffle_buffer, seed=data.shuffle_seed),
        batch_size=batch_size, drop_last=True, num_workers=workers,
        collate_fn=DecodeCollate(**decoder_kwargs(data, tokenizer)),
        multiprocessing_context=start_method if workers > 0 else None,
    )


def dataloader_rate(files: Sequence[str], *, data: DataConfig, tokenizer, batch_size: int, workers: int,
                    warmup: int, last: int) -> Rate:
    loader = dataloader(files, data=data, tokenizer=tokenizer, batch_size=batch_size, workers=workers)
    return timed_batches(loader, warmup=warmup, last=last)
