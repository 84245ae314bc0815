"""Classification and retrieval metrics in torch (no sklearn), named as in CLIP_benchmark."""

from __future__ import annotations

import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits (N, C), labels (N,) int -> {"acc1", "acc5", "mean_per_class_recall"}.

    acc5 uses the top min(5, C) classes. mean_per_class_recall (balanced accuracy) averages the top-1
    recall of each class present in `labels`; classes never labelled are left out rather than
    counted as zero recall.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    labels = labels.to(logits.device).long()
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices  # (N, k)
    hits = topk == labels[:, None]
    correct1 = hits[:, 0].float()
    present = labels.unique()
    recalls = torch.stack([correct1[labels == c].mean() for c in present])
    return {
        "acc1": correct1.mean().item(),
        "acc5": hits.any(dim=1).float().mean().item(),
        "mean_per_class_recall": recalls.mean().item(),
    }


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """image_features (Ni, D), text_features (Nt, D) (unit norm), text_to_image (Nt,) long: the image
    index of each text -> {"image_retrieval_recall@k", "text_retrieval_recall@k"} for k in `ks`.

    Image retrieval: for each text, is its image among the k most similar images (mean over texts).
    Text retrieval: for each image, is any of its texts among the k most similar texts (mean over images).
    k is capped at the number of candidates.
    """
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image must have shape ({n_texts},), got {tuple(text_to_image.shape)}")
    text_to_image = text_to_image.to(image_features.device).long()
    scores = text_features.float() @ image_features.float().T  # (Nt, Ni)
    positive = torch.zeros(n_texts, n_images, dtype=torch.bool, device=scores.device)
    positive[torch.arange(n_texts, device=scores.device), text_to_image] = True
    out = {}
    for k in ks:
        top_images = scores.topk(min(k, n_images), dim=1).indices  # (Nt, k)
        out[f"image_retrieval_recall@{k}"] = positive.gather(1, top_images).any(dim=1).float().mean().item()
        top_texts = scores.T.topk(min(k, n_texts), dim=1).indices  # (Ni, k)
        out[f"text_retrieval_recall@{k}"] = positive.T.gather(1, top_texts).any(dim=1).float().mean().item()
    return out
