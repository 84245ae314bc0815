"""What every Train worker does first and the Ray calls they share: the worker's rank, world and
device, its progress lines, DDP with the configured bucket size, and checkpoint reports whose upload
to storage does not hold training up."""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

import ray.train
import ray.train.torch
import torch

from raylpclip.config import TrainConfig
from raylpclip.distributed import ddp_kwargs


def ddp_wrap(train: TrainConfig) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """Ray Train's `prepare_model` (device placement; DDP when there are several workers) with our DDP options."""
    return functools.partial(ray.train.torch.prepare_model,
                             parallel_strategy_kwargs=ddp_kwargs(bucket_cap_mb=train.ddp_bucket_cap_mb))


def report_checkpoint(metrics: dict, write: Callable[[str], None], *, async_upload: bool) -> None:
    """`write(directory)` the state into a fresh local directory, then hand it to Ray Train.

    With `async_upload` the copy to the run's storage (a shared path or s3://, the slow part for a large
    model) runs in Ray Train's background thread and training goes on at once; Ray deletes the local
    directory after the upload either way, and waits for pending uploads before the run ends. A later
    report waits for an upload still running (Ray keeps reports in order), so uploads never pile up.
    """
    directory = tempfile.mkdtemp(prefix="raylpclip-checkpoint-")
    try:
        write(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    mode = ray.train.CheckpointUploadMode.ASYNC if async_upload else ray.train.CheckpointUploadMode.SYNC
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                     checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=True)


@dataclass(frozen=True)
class WorkerPlace:
    """Where this Train worker is: its rank among `world` workers and its torch device."""

    rank: int
    world: int
    device: torch.device

    def say(self, line: str) -> None:
        """A progress line from rank 0 only (every rank runs the same loop)."""
        if self.rank == 0:
            progress(line)


def start_worker(*, threads: int, seed: int | None) -> WorkerPlace:
    """A Train worker's first steps: quiet Ray Train's per-report log, `threads` torch threads, and the
    same seed on every rank (so that every replica starts from identical weights)."""
    quiet_report_logs()
    torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)
    ctx = ray.train.get_context()
    return WorkerPlace(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def progress(line: str) -> None:
    # Ray Train patches print() into its logger *and* tees it to stdout, so every line would show
    # twice; the process's real stdout shows it once, in the driver's output and the job logs.
    print(line, file=sys.__stdout__, flush=True)


def quiet_report_logs() -> None:
    """Ray Train V2 logs every report (the whole metrics dict) at INFO from a logger named by its file
    path, outside the "ray.train" logger that RunConfig's LoggingConfig sets; our progress lines say
    the same, shorter."""
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
