"""Zero-shot classification over a stream of labelled batches. Pure torch."""

from __future__ import annotations

from typing import Iterable

import torch

from raylpclip import columns
from raylpclip.engine.loop import autocast
from raylpclip.eval.metrics import classification_metrics
from raylpclip.models.clip import normalize_images


@torch.no_grad()
def zeroshot_evaluate(tower, classifier: torch.Tensor, batches: Iterable[dict[str, torch.Tensor]], *,
                      device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """acc1/acc5/mean_per_class_recall of `image_features @ classifier.T` (classifier: (C, D))."""
    was_training = tower.training
    tower.eval()
    logits, labels = [], []
    try:
        for batch in batches:
            images = normalize_images(batch[columns.IMAGE].to(device))
            with autocast(precision, device):
                feats = tower.encode_image(images)
            logits.append(feats.float() @ classifier.to(device).T)
            labels.append(batch[columns.LABEL].to(device))
    finally:
        tower.train(was_training)
    if not logits:
        raise RuntimeError("the eval set yielded no samples")
    labels_t = torch.cat(labels)
    if (labels_t < 0).any():
        raise ValueError("eval samples without a `label` in their metadata; zero-shot eval needs labelled shards")
    metrics = classification_metrics(torch.cat(logits), labels_t)
    metrics["eval_samples"] = float(labels_t.numel())
    return {k: float(v) for k, v in metrics.items()}
