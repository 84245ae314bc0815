"""Ray-side pieces shared by the pretraining worker and the train benchmark: DDP with the configured
bucket size, and checkpoint reports whose upload to storage does not hold training up."""

from __future__ import annotations

import functools
import shutil
import tempfile
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
