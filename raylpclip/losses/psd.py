"""Progressive self-distillation (PSD, methods.md section 1).

The model's own (stop-gradient) logits give soft-alignment targets for a random subset of each
rank's rows; the mixing weight alpha ramps from 0 to a_max during training:

    P = softmax(stopgrad(Z) rows),  T = (1 - alpha) * I + alpha * P  (identity outside the subset)
    L = 0.5 * [CE_soft(Z, T_i2t) + CE_soft(Z^T, T_t2i)]

Each rank owns rows [rank*b, (rank+1)*b) of the global logits and takes its soft targets from the
same gathered logits, so the default teacher costs no extra compute or communication.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from raylpclip.distributed import all_gather_no_grad
from raylpclip.losses.contrastive import gather_features, hard_contrastive_loss, local_labels, local_logits

RAMPS = ("linear", "cosine", "constant")


def psd_alpha(step: int, *, total_steps: int, a_max: float, ramp: str = "linear", warmup_steps: int = 0) -> float:
    """Distillation weight alpha at `step`, rising from 0 to `a_max`.

    alpha is 0 for the first `warmup_steps` steps, then rises over the remaining
    `total_steps - warmup_steps` steps: "linear", "cosine" (half-cosine, slow-fast-slow), or
    "constant" (a_max straight away, for ablations). The result is clamped to [0, a_max].
    """
    if ramp not in RAMPS:
        raise ValueError(f"ramp must be one of {RAMPS}, got {ramp!r}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0.0 <= a_max <= 1.0:
        raise ValueError(f"a_max must be in [0, 1], got {a_max}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return 0.0
    if ramp == "constant":
        return float(a_max)
    # max(1, ...) keeps a ramp that is shorter than one step well-defined (it jumps to a_max).
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if ramp == "linear":
        alpha = a_max * progress
    else:
        alpha = a_max * 0.5 * (1.0 - math.cos(math.pi * progress))
    return float(min(max(alpha, 0.0), a_max))


def soft_subset_mask(
    b: int, fraction: float, *, generator: torch.Generator | None, device: torch.device | str | None = None
) -> Tensor:
    """Random rows that get soft targets: (b,) bool with exactly round(fraction * b) True.

    `round` is Python's (halves go to the even integer). The permutation is drawn on the
    generator's own device, so a CPU generator works for CUDA features.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    k = round(fraction * b)
    perm_device = generator.device if generator is not None else device
    perm = torch.randperm(b, generator=generator, device=perm_device).to(device)
    mask = torch.zeros(b, dtype=torch.bool, device=device)
    mask[perm[:k]] = True
    return mask


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """CE_soft(z, t) = mean over rows of -sum_k t_k log_softmax(z)_k; (b, N), (b, N) -> scalar."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _teacher_logits(
    logits_per_image: Tensor,
    logits_per_text: Tensor,
    logit_scale: Tensor | float,
    *,
    teacher_image_features: Tensor | None,
    teacher_text_features: Tensor | None,
    teacher_temperature: float | None,
) -> tuple[Tensor, Tensor]:
    """Detached teacher logits for this rank's rows: two (b, N) tensors."""
    scale = logit_scale.detach() if isinstance(logit_scale, Tensor) else logit_scale
    if teacher_image_features is None:
        # Default teacher: the student's own logits, stop-gradient. A custom temperature rescales
        # them, s * cos / (s * tau) = cos / tau, instead of recomputing the product.
        t_img, t_txt = logits_per_image.detach(), logits_per_text.detach()
        if teacher_temperature is not None:
            factor = 1.0 / (scale * teacher_temperature)
            t_img, t_txt = t_img * factor, t_txt * factor
        return t_img, t_txt
    with torch.no_grad():
        t_image, t_text = teacher_image_features.detach(), teacher_text_features.detach()
        t_all_image, t_all_text = all_gather_no_grad(t_image), all_gather_no_grad(t_text)
        t_scale = scale if teacher_temperature is None else 1.0 / teacher_temperature
        return local_logits(t_image, t_text, t_all_image, t_all_text, t_scale)


def check_psd_args(
    image_features: Tensor,
    *,
    alpha: float,
    subset_fraction: float,
    teacher_image_features: Tensor | None,
    teacher_text_features: Tensor | None,
    teacher_temperature: float | None,
) -> None:
    """The argument checks of PSD's softmax form (psd_loss) and sigmoid form (losses/psd_siglip.py)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= subset_fraction <= 1.0:
        raise ValueError(f"subset_fraction must be in [0, 1], got {subset_fraction}")
    if teacher_temperature is not None and not teacher_temperature > 0:
        raise ValueError(f"teacher_temperature must be > 0 or None, got {teacher_temperature}")
    if (teacher_image_features is None) != (teacher_text_features is None):
        raise ValueError("teacher_image_features and teacher_text_features must be given together")
    teachers = {"teacher_image_features": teacher_image_features, "teacher_text_features": teacher_text_features}
    for name, t in teachers.items():
        if t is not None and t.shape != image_features.shape:
            want, got = tuple(image_features.shape), tuple(t.shape)
            raise ValueError(f"{name} must have the student's shape {want}, got {got}")


def psd_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    *,
    alpha: float,
    subset_fraction: float = 0.5,
    teacher_image_features: Tensor | None = None,
    teacher_text_features: Tensor | None = None,
    teacher_temperature: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """PSD loss on this rank's rows of the global logits.

    image_features, text_features: (b, D) local, L2-normalised; logit_scale: scalar s (exponentiated,
    clamped). alpha: mixing weight in [0, 1] (from `psd_alpha`). subset_fraction: share of the b local
    rows with soft targets, drawn with `generator`. teacher_*_features: optional (b, D) local features
    of another model (e.g. an EMA copy), gathered without grad; default: the student's own logits,
    stop-gradient. teacher_temperature: teacher logits = cos / tau; default None uses s.
    Returns {"contrastive_loss": scalar, "psd_alpha": scalar, "soft_fraction": scalar}; with alpha 0 or
    no soft rows the loss is bit-identical to `clip_loss`.
    """
    check_psd_args(
        image_features, alpha=alpha, subset_fraction=subset_fraction, teacher_image_features=teacher_image_features,
        teacher_text_features=teacher_text_features, teacher_temperature=teacher_temperature,
    )
    b, device = image_features.shape[0], image_features.device
    all_image, all_text = gather_features(image_features, text_features)
    logits_per_image, logits_per_text = local_logits(image_features, text_features, all_image, all_text, logit_scale)
    labels = local_labels(b, device=device)
    # Draw the subset even when alpha is 0, so the generator's stream (and thus every later subset)
    # does not depend on where the alpha ramp stands.
    mask = soft_subset_mask(b, subset_fraction, generator=generator, device=device)
    stats = {
        "psd_alpha": torch.tensor(float(alpha), device=device),
        "soft_fraction": mask.float().mean() if b > 0 else torch.zeros((), device=device),
    }
    # The mask holds exactly round(fraction * b) rows: asking the host, not the mask, keeps this branch from
    # waiting for the accelerator every step.
    if alpha == 0.0 or round(subset_fraction * b) == 0:
        # Same code path as clip_loss: a_max = 0 must reproduce CLIP exactly (methods.md).
        return {"contrastive_loss": hard_contrastive_loss(logits_per_image, logits_per_text, labels), **stats}

    t_img, t_txt = _teacher_logits(
        logits_per_image, logits_per_text, logit_scale, teacher_image_features=teacher_image_features,
        teacher_text_features=teacher_text_features, teacher_temperature=teacher_temperature,
    )
    onehot = F.one_hot(labels, num_classes=logits_per_image.shape[1]).to(logits_per_image.dtype)
    rows = mask[:, None]
    # Softmax in fp32 at least: 100x-scaled low-precision logits lose the tail of the distribution.
    wide = torch.promote_types(onehot.dtype, torch.float32)
    p_i2t = F.softmax(t_img.to(wide), dim=1).to(onehot.dtype)
    p_t2i = F.softmax(t_txt.to(wide), dim=1).to(onehot.dtype)
    targets_i2t = torch.where(rows, (1.0 - alpha) * onehot + alpha * p_i2t, onehot)
    targets_t2i = torch.where(rows, (1.0 - alpha) * onehot + alpha * p_t2i, onehot)
    loss_i2t = _soft_cross_entropy(logits_per_image, targets_i2t)
    loss_t2i = _soft_cross_entropy(logits_per_text, targets_t2i)
    loss = 0.5 * (loss_i2t + loss_t2i)
    return {"contrastive_loss": loss, **stats}
