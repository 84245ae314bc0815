"""CLIP's symmetric contrastive loss over features gathered from every worker.

Notation (methods.md): a global batch of N = world_size * b pairs, L2-normalised image features u_i
and text features v_j, logit scale s, global logits Z = s * U V^T (N x N). Each rank only computes
its own b rows of Z and of Z^T (the "local loss" of open_clip), so memory grows linearly in N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raylpclip.distributed import all_gather_with_grad, get_rank


def gather_features(image_features: Tensor, text_features: Tensor) -> tuple[Tensor, Tensor]:
    """Gather both modalities from every rank, keeping gradients.

    image_features, text_features: (b, D) local -> (all_image (N, D), all_text (N, D)).
    """
    return all_gather_with_grad(image_features), all_gather_with_grad(text_features)


def local_logits(
    image_features: Tensor,
    text_features: Tensor,
    all_image: Tensor,
    all_text: Tensor,
    logit_scale: Tensor | float,
) -> tuple[Tensor, Tensor]:
    """This rank's rows of the global logits Z and Z^T.

    image_features, text_features: (b, D) local; all_image, all_text: (N, D) gathered;
    logit_scale: scalar s. Returns (logits_per_image (b, N), logits_per_text (b, N)); the matching
    column of local row i is `rank * b + i` (see `local_labels`).
    """
    logits_per_image = logit_scale * image_features @ all_text.T
    logits_per_text = logit_scale * text_features @ all_image.T
    return logits_per_image, logits_per_text


def local_labels(b: int, *, device: torch.device | str | None = None) -> Tensor:
    """Targets of this rank's b rows: (b,) long, arange(b) + rank * b."""
    return torch.arange(b, device=device) + get_rank() * b


def hard_contrastive_loss(logits_per_image: Tensor, logits_per_text: Tensor, labels: Tensor) -> Tensor:
    """0.5 * [CE(logits_per_image, labels) + CE(logits_per_text, labels)]: scalar.

    Shared by `clip_loss` and PSD with no soft rows, so both give bit-identical values.
    """
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
    """CLIP loss on this rank's rows of the global logits.

    image_features, text_features: (b, D), already L2-normalised; logit_scale: scalar s, already
    exponentiated and clamped. Returns {"contrastive_loss": scalar}. Ranks' losses are averaged by
    DDP's gradient averaging; their mean equals the single-process loss on the global batch.
    """
    all_image, all_text = gather_features(image_features, text_features)
    logits_per_image, logits_per_text = local_logits(image_features, text_features, all_image, all_text, logit_scale)
    labels = local_labels(image_features.shape[0], device=image_features.device)
    return {"contrastive_loss": hard_contrastive_loss(logits_per_image, logits_per_text, labels)}
