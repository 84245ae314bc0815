"""The vision tower's share of a training step, with and without patch dropout, pure torch (no Ray).

Patch dropout shortens only the image tower's token sequence, so the whole step speeds up by less than
the tower does. `raylpclip bench train bench.patch_dropout=P` reports both: the step's ratio from the
plain loop's windows (bench/train_timing.py) and the tower's from here: the vision tower's forward and
backward alone (`encode_image`, backward of the features' sum) on one of the plain loop's batches, at
the run's own `model.patch_dropout` and at P, interleaved so that a burst of others' work lands on both.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from raylpclip import batch_schema
from raylpclip.engine.loop import autocast
from raylpclip.models.clip import normalize_images
from raylpclip.models.patch_dropout import patch_dropout_of, set_patch_dropout


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vision_times(tower, batch: dict[str, torch.Tensor], *, settings: dict[str, float], repeats: int,
                 precision: str, device: torch.device) -> dict[str, float]:
    """Median seconds of one vision forward + backward of `tower` (a ClipTower in train mode) on `batch`'s
    images, for each named patch dropout of `settings` ({"base": 0.0, "patch_dropout": 0.5}); one untimed
    pass per setting first (allocations, a compiled tower's recompile). The tower's dropout and its
    parameters' gradients are left as they were found."""
    images = normalize_images(batch[batch_schema.IMAGE].to(device))
    before = patch_dropout_of(tower.clip)
    saved = {p: p.grad for p in tower.parameters()}
    times: dict[str, list[float]] = {name: [] for name in settings}
    try:
        for i in range(repeats + 1):
            for name, p in settings.items():
                set_patch_dropout(tower.clip, p)
                _sync(device)
                start = time.perf_counter()
                with autocast(precision, device):
                    features = tower.encode_image(images)
                if features.requires_grad:  # a wholly locked image tower (model.lock_image) has no backward
                    features.float().sum().backward()
                _sync(device)
                if i:  # the first pass of each setting is its warm-up
                    times[name].append(time.perf_counter() - start)
    finally:
        set_patch_dropout(tower.clip, before)
        for param, grad in saved.items():
            param.grad = grad
    return {name: float(np.median(t)) for name, t in times.items()}
