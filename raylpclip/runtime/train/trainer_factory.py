"""What the trainers' drivers share: the training shards learnt before Ray starts, the Ray Data inputs
a TorchTrainer gets (positioned training sources, the eval set), where the run's checkpoints live, the
TorchTrainer itself, and `fit`, which turns a data or checkpoint error deep inside a worker into one line.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs
import ray.train
from ray.train.torch import TorchTrainer

from raylpclip.data.decode import DataError
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.data.storage import arrow_filesystem, storage_filesystem
from raylpclip.engine.checkpoint_choice import list_checkpoints
from raylpclip.engine.checkpoint_state import CheckpointError
from raylpclip.run_outcome import RunStopped
from raylpclip.runtime.cluster.stop_notice import stop_on_sigterm
from raylpclip.runtime.data.batch_stream import source_names
from raylpclip.runtime.data.decode_pool import eval_dataset, train_source
from raylpclip.runtime.train.worker_setup import progress


@dataclass
class TrainData:
    """What the driver learns about the training shards before Ray starts."""

    files: dict[str, list[str]]  # source path -> shard files
    formats: dict[str, str]
    samples: int | None  # from the img2dataset `_stats.json` files, when every shard has one


def inspect_train_data(cfg) -> TrainData:
    """The training sources' shards (`cfg.data`): missing shards fail here, before Ray starts."""
    files, formats = {}, {}
    for src in cfg.data.train_sources():
        files[src.path], formats[src.path] = resolve_shards(src.path, src.format)
    counts = [read_stats(f) for f in files.values()]
    return TrainData(files, formats, None if None in counts else sum(counts))


@dataclass
class TrainInputs:
    """A trainer's Ray Data inputs and what its workers need to read the training sources again."""

    datasets: dict[str, Any]  # Ray Train dataset name -> Dataset ("train" or "train_<i>", and "eval")
    train_names: list[str]  # the datasets split across workers (the eval set goes whole to each)
    files: list[list[str]]  # per source, its whole sorted shard list
    formats: list[str]
    filesystems: list[Any]  # the driver's, with its S3 credentials, for a resumed epoch's remainder


def train_inputs(cfg, data: TrainData, *, tokenizer, counter, with_eval: bool, storage_counter=None) -> TrainInputs:
    """Training sources read through the positioned reader (runtime/data/shard_reader.py), so that every
    row says where it sits and a resumed run can skip what was consumed; the eval set if asked. A GET
    of an s3:// shard that is retried counts as `read_retries` in `storage_counter`."""
    sources = cfg.data.train_sources()
    files = [data.files[s.path] for s in sources]
    formats = [data.formats[s.path] for s in sources]
    on_retry = StorageRetries(storage_counter, reason="read_retries")
    filesystems = [arrow_filesystem(f, cfg.data.s3, on_retry=on_retry) for f in files]
    datasets = {name: train_source(f, fmt=fmt, cfg=cfg.data, tokenizer=tokenizer, counter=counter, filesystem=fs)
                for name, f, fmt, fs in zip(source_names(len(sources)), files, formats, filesystems)}
    train_names = list(datasets)
    if with_eval and cfg.data.eval:
        datasets["eval"] = eval_dataset(cfg.data, tokenizer=tokenizer, counter=counter)
    return TrainInputs(datasets, train_names, files, formats, filesystems)


class StorageRetries:
    """on_retry for an S3 filesystem: one line per retry, and a count under `reason` in the run's counter
    actor (picklable: it travels with the filesystem to Ray Train's controller and workers, and to Ray
    Data's read tasks). `storage_retries`: the run's storage (checkpoints); `read_retries`: shard reads."""

    def __init__(self, counter, *, reason: str = "storage_retries"):
        self.counter, self.reason = counter, reason

    def __call__(self, what: str) -> None:
        place = "storage" if self.reason == "storage_retries" else "shards"
        progress(f"[raylpclip] {place}: transient error, retrying: {what}")
        if self.counter is not None:
            self.counter.add.remote({self.reason: 1})


def run_storage(cfg, *, storage_counter=None) -> tuple[str, pafs.FileSystem | None]:
    """Where Ray Train keeps the run (`ray.storage_path`, else `output_dir`) and the filesystem for it:
    on s3:// the endpoint and credentials of `data.s3`, with counted retries (data/storage.py), and the
    path without its scheme (what Ray Train expects beside a filesystem)."""
    storage = cfg.ray.storage_path or str(Path(cfg.output_dir).resolve())
    filesystem = storage_filesystem(storage, cfg.data.s3, on_retry=StorageRetries(storage_counter))
    return (storage.split("://", 1)[1] if filesystem is not None else storage), filesystem


def run_path(cfg, storage: str) -> str:
    """The run's own directory in its storage: where its checkpoints are (what a restore lists)."""
    return f"{storage.rstrip('/')}/{cfg.name}"


def make_trainer(worker: Callable[..., None], args: Any, *, name: str, storage: str,
                 filesystem: pafs.FileSystem | None = None, num_workers: int | tuple[int, int], use_gpu: bool,
                 resources: dict[str, float], datasets: dict[str, Any], train_names: list[str],
                 keep_checkpoints: int | None = None, max_failures: int = 0, callbacks: tuple = (),
                 data_options=None) -> TorchTrainer:
    """A TorchTrainer running `worker(args)` on `num_workers` workers (a (min, max) pair: an elastic
    group). `data_options`: Ray Data ExecutionOptions for the datasets (default: the controller's)."""
    return TorchTrainer(
        functools.partial(worker, args),  # workers receive the typed args, not a dict
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # Ray Train logs every report (the whole metrics dict) at INFO; the workers' progress lines
            # say it shorter. Full logs stay in the session's log files.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        # The eval set goes whole to every worker (rank 0 evaluates); only training data is split.
        dataset_config=ray.train.DataConfig(datasets_to_split=train_names,
                                            execution_options=data_options or ingest_options()),
    )


def ingest_options(object_store_bytes: int = 0):
    """Ray Data ExecutionOptions for a Train run's datasets: what Ray Train's default_ingest_options()
    takes from the DataContext, without the deprecated `exclude_resources` it still passes (Ray warns
    about it in every run's dataset manager); `object_store_bytes` > 0 caps the object store budget."""
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    limits = current.resource_limits
    if object_store_bytes:
        limits = limits.copy(object_store_memory=object_store_bytes)
    return ExecutionOptions(resource_limits=limits, preserve_order=current.preserve_order,
                            verbose_progress=current.verbose_progress)


def _failure_chain(exc: BaseException):
    """Each worker's exception and its causes, then `exc`'s own (Ray wraps a worker's error in task/UDF
    errors and truncates the combined message, so each is looked at alone)."""
    for failure in list(getattr(exc, "worker_failures", {}).values()) + [exc]:
        seen = 0
        while failure is not None and seen < 10:
            yield failure
            failure, seen = failure.__cause__ or failure.__context__, seen + 1


def _data_error_line(exc: BaseException) -> tuple[type, str] | None:
    """Our DataError's or CheckpointError's message (and which), found in a worker failure."""
    for failure in _failure_chain(exc):
        found = re.search(r"(DataError|CheckpointError): (.+)", str(failure))
        if found:
            return {"DataError": DataError, "CheckpointError": CheckpointError}[found.group(1)], found.group(2).strip()
    return None


# A write that found the device full (ENOSPC) or the quota used up (EDQUOT), as Python and pyarrow word it.
NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|\[Errno (28|122)\]|errno (28|122)\b")


def checkpoint_place(cfg) -> tuple[pafs.FileSystem, str]:
    """The filesystem and directory holding the run's checkpoints (what `fit` names when a write fails)."""
    storage, filesystem = run_storage(cfg)
    return filesystem or pafs.LocalFileSystem(), run_path(cfg, storage)


def fit(trainer: TorchTrainer, name: str, *, notice=None, steps: int | None = None, grace_s: float = 120.0,
        checkpoints: tuple[pafs.FileSystem, str] | None = None):
    """trainer.fit(), with a data or checkpoint error from deep inside a worker raised as one clear line.

    With the run's stop `notice` (runtime/cluster/stop_notice.py), SIGTERM during the fit asks the workers to
    checkpoint and stop; a run that ended before `steps` that way (or on a preemption notice) raises RunStopped,
    naming the step and checkpoint the same command resumes from. A full disk (or quota) under the run's
    `checkpoints` (checkpoint_place) raises one OSError naming it and the newest whole checkpoint there."""
    with stop_on_sigterm(notice, grace_s=grace_s, say=progress) if notice is not None else contextlib.nullcontext():
        result = _fit(trainer, name, checkpoints)
    step = (result.metrics or {}).get("step")
    if steps is not None and step is not None and step < steps:
        reason = (ray.get(notice.get.remote()) if notice is not None else None) or "a preemption notice"
        where = f"; {result.checkpoint.path} holds it" if result.checkpoint is not None else ""
        raise RunStopped(f"run {name} stopped at step {step} of {steps} ({reason}){where}; run the same command "
                         "again to resume")
    return result


def _fit(trainer: TorchTrainer, name: str, checkpoints: tuple[pafs.FileSystem, str] | None = None):
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        found = _data_error_line(exc)
        if found:
            kind, line = found
            raise kind(f"run {name} stopped: {line}") from None
        full = _first_line(exc, NO_SPACE)
        if full:
            raise OSError(f"run {name} stopped: no space left for its checkpoints ({full}). "
                          + _resume_hint(checkpoints)) from None
        raise


def _first_line(exc: BaseException, pattern: re.Pattern) -> str | None:
    """The first line matching `pattern` in a worker failure's messages or their causes."""
    for failure in _failure_chain(exc):
        line = next((ln.strip() for ln in str(failure).splitlines() if pattern.search(ln)), None)
        if line:
            return line[:300]
    return None


def _resume_hint(checkpoints: tuple[pafs.FileSystem, str] | None) -> str:
    """Where the run stands on its storage after a failed write, and what to do."""
    if checkpoints is None:
        return "Free space where the run keeps its checkpoints and run the same command again to resume."
    fs, path = checkpoints
    try:
        good = next((f for f in list_checkpoints(fs, path) if f.problem is None), None)
    except OSError:
        good = None
    where = (f"{posixpath.basename(good.path)} (step {good.step}) is whole and is where it resumes" if good is not None
             else "no checkpoint there is whole yet: it starts over")
    return f"In {path}, {where}. Free space on that device and run the same command again."


def must_have_checkpoint(result, name: str):
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint; see the worker logs above")
    return result.checkpoint
