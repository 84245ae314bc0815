"""Ray's part of `raylpclip bench ingest`: its route `ours`, the training pipeline consumed by a real
1-worker TorchTrainer.

It lives here, beside the Train workers' batch stream, because what it measures is Ray Data's ingest
into a Train worker; bench/ itself imports no Ray (only runtime/ may), so the bench hands its timing
in as a callable that runs inside the worker (bench/train_worker_route.py).
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray.train

from raylpclip.config import DataConfig
from raylpclip.runtime.data.batch_stream import TrainStreams
from raylpclip.runtime.data.decode_pool import train_source
from raylpclip.runtime.train.trainer_factory import make_trainer


@dataclass
class MeasuringArgs:
    data: DataConfig
    files: list[str]
    tokenizer: Any
    batch_size: int
    epoch_batches: int
    measure: Callable[..., dict[str, Any]]
    measure_kwargs: dict[str, Any]


def _measuring_worker(args: MeasuringArgs) -> None:
    """Train worker: the trainer's own batch stream (runtime/data/batch_stream.py) over its dataset shard,
    the first `epoch_batches` handed to `measure`, whose figures are reported once. (The stream goes on
    epoch after epoch; the measured batches are within the first.)"""
    streams = TrainStreams(args.data, files=[args.files], formats=["webdataset"], tokenizer=args.tokenizer)
    epoch = itertools.islice(streams.batches(args.batch_size), args.epoch_batches)
    metrics = args.measure(epoch, **args.measure_kwargs)
    # Train v2 keeps only the metrics of reports that carry a checkpoint: an empty one carries these.
    with tempfile.TemporaryDirectory() as tmp:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_worker_metrics(files: Sequence[str], *, data: DataConfig, tokenizer, batch_size: int, epoch_batches: int,
                         measure: Callable[..., dict[str, Any]], measure_kwargs: dict[str, Any], name: str,
                         storage_path: str) -> dict[str, Any]:
    """The webdataset `files` read as `raylpclip pretrain` reads them (`train_source`: Ray Data reads the
    tars, an actor pool decodes, augments and tokenizes), consumed by one Train worker of one CPU in
    batches of `batch_size`; `measure(batches: Iterator[dict], **measure_kwargs) -> metrics` runs in
    the worker (a module-level function: the worker imports it). Returns the metrics it reported."""
    ds = train_source(list(files), fmt="webdataset", cfg=data, tokenizer=tokenizer)
    args = MeasuringArgs(data, list(files), tokenizer, batch_size, epoch_batches, measure, measure_kwargs)
    trainer = make_trainer(_measuring_worker, args, name=name, storage=storage_path, num_workers=1, use_gpu=False,
                           resources={"CPU": 1}, datasets={"train": ds}, train_names=["train"])
    return trainer.fit().metrics or {}
