"""Progressive self-distillation with the sigmoid loss (PSD-sigmoid): PSD's soft targets, made binary.

SigLIP scores every pair on its own, so the soft target of a pair is a probability of "matching" rather
than a share of a softmax row. For this worker's image rows i in the soft subset S:

    target_ij = (1 - a_t) * y_ij + a_t * sigmoid(stopgrad(teacher_logits_ij))     (y_ij = 1 for i's caption)
    target_ij = y_ij                                                                for rows outside S
    L = -(1/b) * sum_ij [target_ij * log sigmoid(l_ij) + (1 - target_ij) * log sigmoid(-l_ij)]

the binary cross-entropy counterpart of the softmax form (losses/psd.py), with the same a_t ramp, subset
and teachers. teacher_logits: the student's own logits s * cos + b, stop-gradient (default, no extra
compute or communication, in both the gathered and the ring form); with `teacher_temperature` tau,
cos / tau + b; with an EMA teacher's features, s * cos_EMA + b (or cos_EMA / tau + b), the EMA's text
features gathered without gradient. The bias is the student's own, stop-gradient, as the softmax form
takes the student's scale. At a_t = 0 every target is y_ij and the loss is siglip_loss's, through the
same code. Why it is sound: each target lies in [0, 1], the BCE is minimised at sigmoid(l_ij) = target_ij,
and the gradient w.r.t. l_ij is (sigmoid(l_ij) - target_ij) / b, bounded as in plain SigLIP.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raylpclip.distributed import all_gather_no_grad
from raylpclip.losses.psd import check_psd_args, soft_subset_mask
from raylpclip.losses.siglip import SoftTargets, siglip_loss


def psd_siglip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    *,
    alpha: float,
    subset_fraction: float = 0.5,
    dist_impl: str = "gather",
    teacher_image_features: Tensor | None = None,
    teacher_text_features: Tensor | None = None,
    teacher_temperature: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """PSD-sigmoid loss of this worker's images against every worker's texts.

    image_features, text_features: (b, D) local, L2-normalised; logit_scale s and logit_bias b: scalars.
    alpha, subset_fraction, teacher_*, generator: as in `psd_loss`; dist_impl: "gather" or "ring".
    Returns {"contrastive_loss", "psd_alpha", "soft_fraction"}; with alpha 0 or no soft rows the loss is
    bit-identical to `siglip_loss`.
    """
    check_psd_args(
        image_features, alpha=alpha, subset_fraction=subset_fraction, teacher_image_features=teacher_image_features,
        teacher_text_features=teacher_text_features, teacher_temperature=teacher_temperature,
    )
    b, device = image_features.shape[0], image_features.device
    # Drawn even when alpha is 0, so that later subsets do not depend on where the ramp stands (as psd_loss).
    mask = soft_subset_mask(b, subset_fraction, generator=generator, device=device)
    stats = {
        "psd_alpha": torch.tensor(float(alpha), device=device),
        "soft_fraction": mask.float().mean() if b > 0 else torch.zeros((), device=device),
    }
    if alpha == 0.0 or round(subset_fraction * b) == 0:
        return {**siglip_loss(image_features, text_features, logit_scale, logit_bias, dist_impl=dist_impl), **stats}

    scale = None  # the student's own logits, stop-gradient
    if teacher_temperature is not None:
        scale = 1.0 / teacher_temperature
    elif teacher_image_features is not None:
        scale = logit_scale.detach() if isinstance(logit_scale, Tensor) else logit_scale
    soft = SoftTargets(
        alpha=float(alpha), rows=mask, scale=scale,
        image=None if teacher_image_features is None else teacher_image_features.detach(),
        text=None if teacher_text_features is None else all_gather_no_grad(teacher_text_features),
    )
    out = siglip_loss(image_features, text_features, logit_scale, logit_bias, dist_impl=dist_impl, soft=soft)
    return {**out, **stats}
