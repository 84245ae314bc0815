"""The part of CLIP that fine-tuning trains: the image tower and a linear head. Pure torch, no Ray.

`ImageClassifier` holds CLIP's vision transformer and visual projection (shared with the ClipTower it
came from, so a tower whose image part was trained can be saved as a whole CLIP again) and a
`LinearProbe` head. Its forward is the whole training forward, so a DistributedDataParallel wrapper
around it synchronises every trained parameter; the text tower is never part of it.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raylpclip import batch_schema
from raylpclip.data.decode import DataError
from raylpclip.engine.loop import autocast
from raylpclip.eval.calibration import robustness_metrics
from raylpclip.models.clip import ClipTower, normalize_images
from raylpclip.models.head import LinearProbe


class ImageEncoder(nn.Module):
    """f(x): CLIP's vision transformer, pooled, projected; the same computation as ClipTower.encode_image."""

    def __init__(self, vision: nn.Module, projection: nn.Module):
        super().__init__()
        self.vision = vision
        self.projection = projection

    @classmethod
    def of(cls, tower: ClipTower) -> "ImageEncoder":
        """The image part of `tower`, sharing its modules (training this trains the tower's image part)."""
        return cls(tower.clip.vision_model, tower.clip.visual_projection)

    def forward(self, images: Tensor) -> Tensor:
        """float (B, 3, H, W), already normalised -> (B, D) projected features, not normalised."""
        return self.projection(self.vision(pixel_values=images).pooler_output)


class ImageClassifier(nn.Module):
    """head(normalise(f(x))): what `ft` and `carft` train, and what WiSE-FT interpolates."""

    def __init__(self, encoder: ImageEncoder, head: LinearProbe):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) normalised -> {"image_features": (B, D) unit norm, "logits": (B, C)}."""
        features = F.normalize(self.encoder(images).float(), dim=-1)
        return {"image_features": features, "logits": self.head(features)}


def set_trainable(model: ImageClassifier, *, trainable: str, train_head: bool) -> ImageClassifier:
    """Mark which parameters train (see commands/finetune.py, TRAINABLE); the rest get requires_grad False."""
    model.requires_grad_(True)
    if trainable == "image_no_embed":
        # Input embeddings are the most generic part of a ViT; freezing them keeps low-level features.
        model.encoder.vision.embeddings.requires_grad_(False)
    elif trainable != "image":
        raise ValueError(f"unknown trainable {trainable!r}; expected image or image_no_embed")
    model.head.requires_grad_(train_head)
    return model


def frozen_copy(encoder: ImageEncoder) -> ImageEncoder:
    """theta_0: a deep copy in eval mode whose parameters never take gradients."""
    return copy.deepcopy(encoder).eval().requires_grad_(False)


def labelled_only(batches: Iterable[dict[str, Tensor]], *, batch_size: int, on_skip: Callable[[int], None],
                  fail_after: int = 1000, source: str = "") -> Iterator[dict[str, Tensor]]:
    """Batches of exactly `batch_size` rows whose LABEL is set (>= 0); rows without a label (LABEL -1)
    are dropped and counted through `on_skip(n)`. Stops with a DataError when `fail_after` rows
    arrived and none had a label: the shards are caption-only, not a classification set."""
    pending: list[dict[str, Tensor]] = []
    held = kept = dropped = 0
    for batch in batches:
        keep = batch[batch_schema.LABEL] >= 0
        n_drop = int((~keep).sum())
        if n_drop:
            dropped += n_drop
            on_skip(n_drop)
            batch = {k: v[keep] for k, v in batch.items()}
        n = int(batch[batch_schema.LABEL].shape[0])
        kept += n
        if kept == 0 and dropped >= fail_after:
            raise DataError(f"training shards {source} gave {dropped} samples and none with a class label "
                             "(`label` in the .json metadata or parquet column); fine-tuning needs labelled shards")
        if n:
            pending.append(batch)
            held += n
        while held >= batch_size:
            merged = {k: torch.cat([b[k] for b in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in merged.items()}
            rest = {k: v[batch_size:] for k, v in merged.items()}
            held -= batch_size
            pending = [rest] if held else []


@torch.no_grad()
def classifier_logits(predict: Callable[[Tensor], Tensor], batches: Iterable[dict[str, Tensor]], *,
                      device: torch.device, precision: str = "fp32") -> tuple[Tensor, Tensor, int]:
    """(logits (N, C) float, labels (N,), unlabelled rows skipped) of `predict(normalised images)`."""
    logits, labels, skipped = [], [], 0
    for batch in batches:
        label = batch[batch_schema.LABEL]
        keep = label >= 0
        skipped += int((~keep).sum())
        if not keep.any():
            continue
        images = normalize_images(batch[batch_schema.IMAGE][keep].to(device))
        with autocast(precision, device):
            logits.append(predict(images).float().cpu())
        labels.append(label[keep].cpu())
    if not logits:
        raise ValueError(f"the eval set gave no labelled sample ({skipped} without a label); "
                         "classification eval needs `label` in the shards' metadata")
    return torch.cat(logits), torch.cat(labels), skipped


def evaluate_classifier(predict: Callable[[Tensor], Tensor], batches: Iterable[dict[str, Tensor]], *,
                        device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """acc1, acc5, mean_per_class_recall, ece, nll, auroc (methods.md names) and eval_samples."""
    logits, labels, skipped = classifier_logits(predict, batches, device=device, precision=precision)
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"eval label {int(labels.max())} is out of range for a {logits.shape[1]}-class head")
    metrics = robustness_metrics(logits, labels)
    metrics.update(eval_samples=float(labels.numel()), eval_unlabelled=float(skipped))
    return metrics
