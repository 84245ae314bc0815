"""Ray's part of `raylpclip bench train` besides the pretraining TorchTrainer itself (which it builds
with runtime/train/pretrain_driver.build_trainer): the plain loop's batches decoded by the pipeline and
put in the object store, the plain loop run as a Ray task with a Train worker's resources, and Ray
Data's object-store budget for the pipeline runs' datasets.

Here in runtime/train because all three serve the Train runs the bench compares; bench/ itself imports
no Ray (only runtime/ may), and the plain loop it runs as a task is Ray-free (bench/train_timing.py).
"""

from __future__ import annotations

from typing import Any, Callable

import ray
import ray.train

from raylpclip.config import PretrainConfig
from raylpclip.data.shard_files import resolve_shards
from raylpclip.runtime.data.decode_pool import train_source
from raylpclip.runtime.train.trainer_factory import ingest_options


def premade_batch_ref(cfg: PretrainConfig, *, tokenizer, micro: int, count: int) -> ray.ObjectRef:
    """`count` micro-batches of rows decoded by the training pipeline itself (first source), as numpy,
    in the object store once for every round's task."""
    src = cfg.data.train_sources()[0]
    files, fmt = resolve_shards(src.path, src.format)
    ds = train_source(files, fmt=fmt, cfg=cfg.data, tokenizer=tokenizer)
    batch = ds.take_batch(batch_size=micro * count)
    got = len(next(iter(batch.values())))
    if got < micro * count:
        raise ValueError(f"training data gave {got} samples, the plain loop needs {micro * count} "
                         f"(bench.memory_batches={count} x micro-batch {micro})")
    return ray.put(batch)


def run_as_task(fn: Callable[..., Any], *args: Any, num_cpus: float, num_gpus: float) -> Any:
    """fn(*args) as one Ray task: a worker process like a Train worker's, with these resources (and, with
    a GPU, that GPU); an ObjectRef among `args` arrives as its value. Returns what fn returned."""
    task = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus)
    return ray.get(task.remote(*args))


def data_options(budget: int):
    """Ray Data ExecutionOptions for the bench's Train datasets: Train's defaults with an object-store
    budget of `budget` bytes (None, Train's defaults, for 0). Train resolves its default options in its
    own controller process, so a budget set in this process's DataContext would not reach the datasets."""
    return ingest_options(budget) if budget else None
