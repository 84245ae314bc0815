"""Ray's part of `raylpclip bench ingest`: its route `ours`, the training pipeline consumed by a real
1-worker TorchTrainer.

It lives here, beside the Train workers' batch stream, because what it measures is Ray Data's ingest
into a Train worker; bench/ itself imports no Ray (only runtime/ may), so the bench hands its timing
in as a callable that runs inside the worker (bench/train_worker_route.py).
"""

from __future__ import annotations

import itertools
import tempfile
from typing import Any, Callable, Sequence

import ray.train
from ray.train.torch import TorchTrainer

from raylpclip.config import DataConfig, PretrainConfig, TrainConfig, from_dict, to_dict
from raylpclip.runtime.data.shard_reader import train_source
from raylpclip.runtime.train.pretrain_worker import batch_stream


def _measuring_worker(loop_config: dict) -> None:
    """Train worker: the trainer's own `batch_stream` over its dataset shard, the first `epoch_batches`
    handed to `measure`, whose figures are reported once. (`batch_stream` goes on epoch after epoch;
    the measured batches are within the first.)"""
    cfg = from_dict(PretrainConfig, loop_config["config"])
    stream = batch_stream(ray.train.get_dataset_shard("train"), micro_batch=cfg.train.batch_size, cfg=cfg)
    epoch = itertools.islice(stream, loop_config["epoch_batches"])
    metrics = loop_config["measure"](epoch, **loop_config["measure_kwargs"])
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
    pretrain = PretrainConfig(data=data, train=TrainConfig(batch_size=batch_size, num_workers=1))
    trainer = TorchTrainer(
        _measuring_worker,
        train_loop_config={"config": to_dict(pretrain), "epoch_batches": epoch_batches,
                           "measure": measure, "measure_kwargs": measure_kwargs},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets={"train": ds},
    )
    return trainer.fit().metrics or {}
