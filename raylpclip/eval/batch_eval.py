"""Zero-shot classification over a stream of labelled batches. Pure torch."""

from __future__ import annotations

from typing import Iterable

import torch

from raylpclip import batch_schema
from raylpclip.engine.loop import autocast
from raylpclip.eval.metrics import classification_metrics, retrieval_metrics
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
            images = normalize_images(batch[batch_schema.IMAGE].to(device))
            with autocast(precision, device):
                feats = tower.encode_image(images)
            logits.append(feats.float() @ classifier.to(device).T)
            labels.append(batch[batch_schema.LABEL].to(device))
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


@torch.no_grad()
def retrieval_evaluate(tower, batches: Iterable[dict[str, torch.Tensor]], *, device: torch.device,
                       precision: str = "fp32", ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Image<->text retrieval recall@k over an eval set of image-caption rows. Rows sharing an
    `image_id` (several captions of one photo) are one image with several correct texts."""
    was_training = tower.training
    tower.eval()
    image_feats, text_feats, image_ids = [], [], []
    try:
        for batch in batches:
            images = normalize_images(batch[batch_schema.IMAGE].to(device))
            with autocast(precision, device):
                image_feats.append(tower.encode_image(images).float())
                text_feats.append(tower.encode_text(batch[batch_schema.INPUT_IDS].to(device),
                                                    batch[batch_schema.ATTENTION_MASK].to(device)).float())
            image_ids.append(batch[batch_schema.IMAGE_ID])
    finally:
        tower.train(was_training)
    if not text_feats:
        raise RuntimeError("the eval set yielded no samples")
    ids = torch.cat(image_ids)
    unique, text_to_image = torch.unique(ids, return_inverse=True)
    first_row = torch.full((unique.numel(),), ids.numel(), dtype=torch.long)
    first_row.scatter_reduce_(0, text_to_image, torch.arange(ids.numel()), reduce="amin")
    images = torch.cat(image_feats)[first_row.to(device)]
    metrics = retrieval_metrics(images, torch.cat(text_feats), text_to_image, ks=ks)
    metrics.update(eval_images=float(unique.numel()), eval_texts=float(ids.numel()))
    return metrics
