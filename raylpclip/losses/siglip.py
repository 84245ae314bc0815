"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023) over the text features of every worker.

Every (image i, text j) pair is its own binary problem, with no softmax over the batch:

    logits_ij = s * u_i . v_j + b          s = exp(t') (init 10), b learnable (init -10)
    L = -(1/b_local) * sum_{i local, j global} log sigmoid(z_ij * logits_ij),   z_ij = +1 if j is i's caption, else -1

normalised by this worker's image count b_local, as big_vision and open_clip do. The mean of the workers'
losses is then (1/N) * sum over all N x N pairs, the single-process loss on the global batch, and DDP's
gradient average gives its gradient (tests/unit/test_siglip_distributed.py).

Each worker scores only its own b images against every worker's texts; no worker ever holds N x N:
- `gather`: all-gather the texts with gradient (N, D) and score the (b, N) block at once;
- `ring`: pass the text chunks around the ring (distributed.ring_pass_with_grad), scoring one (b, b) block
  per hop. Each block is recomputed in the backward (activation checkpointing), so the logits held at
  any time are one (b, b) block; what stays for the backward is the chunks' features, (N, D) in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from raylpclip.distributed import all_gather_with_grad, get_rank, ring_pass_with_grad

DIST_IMPLS = ("gather", "ring")


@dataclass(frozen=True)
class SoftTargets:
    """PSD-sigmoid's targets (losses/psd_siglip.py): on the image rows in `rows`,
    target_ij = (1 - alpha) * y_ij + alpha * sigmoid(teacher_ij); the hard y_ij on the others.

    scale: None makes the teacher the student's own logits, stop-gradient; a value makes it
    scale * cos(teacher image, teacher text) + b (the student's b, stop-gradient)."""

    alpha: float
    rows: Tensor  # (b,) bool, this worker's image rows with soft targets
    scale: Tensor | float | None = None
    image: Tensor | None = None  # (b, D) teacher image features; None: the student's own
    text: Tensor | None = None  # (N, D) every worker's teacher text features (no grad); None: the student's


def positives(b: int, n: int, *, offset: int | None, device: torch.device | str | None = None) -> Tensor:
    """(b, n) bool: True at (i, offset + i), image i's own caption; offset None: a block without one."""
    y = torch.zeros(b, n, dtype=torch.bool, device=device)
    if offset is not None:
        rows = torch.arange(b, device=device)
        y[rows, offset + rows] = True
    return y


def _teacher_logits(image: Tensor, text: Tensor, logits: Tensor, bias: Tensor | float, soft: SoftTargets,
                    text_offset: int) -> Tensor:
    """This block's detached teacher logits, (b, c)."""
    with torch.no_grad():
        if soft.scale is None:
            return logits.detach()
        t_image = image if soft.image is None else soft.image
        t_text = text if soft.text is None else soft.text[text_offset:text_offset + text.shape[0]]
        bias = bias.detach() if isinstance(bias, Tensor) else bias
        return soft.scale * t_image.detach() @ t_text.detach().T + bias


def block_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float, *,
               offset: int | None, soft: SoftTargets | None = None, text_offset: int = 0) -> Tensor:
    """The loss summed over one block of pairs (not yet divided by b): image (b, D), text (c, D); `offset`
    is the column of image 0's caption in this block (None: none of them is here); `text_offset`: the
    block's first column in the global batch (where its teacher texts are in `soft.text`)."""
    # Logits in the features' dtype (fp32 from PretrainTask) even under bf16 autocast: near b = -10 a bf16 logit
    # is only good to ~0.06, and the block's matmul is small beside the towers'.
    with torch.autocast(device_type=image.device.type, enabled=False):
        return _block_loss(image, text, logit_scale, logit_bias, offset=offset, soft=soft, text_offset=text_offset)


def _block_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float, *,
                offset: int | None, soft: SoftTargets | None, text_offset: int) -> Tensor:
    logits = logit_scale * image @ text.T + logit_bias
    y = positives(image.shape[0], text.shape[0], offset=offset, device=logits.device).to(logits.dtype)
    if soft is None:
        return -F.logsigmoid((2.0 * y - 1.0) * logits).sum()
    teacher = _teacher_logits(image, text, logits, logit_bias, soft, text_offset)
    # The sigmoid in fp32 at least: a bf16 teacher probability near 0 or 1 loses what the soft target adds.
    wide = torch.promote_types(logits.dtype, torch.float32)
    p = torch.sigmoid(teacher.to(wide)).to(logits.dtype)
    targets = torch.where(soft.rows[:, None], (1.0 - soft.alpha) * y + soft.alpha * p, y)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def siglip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                logit_bias: Tensor | float, *, dist_impl: str = "gather",
                soft: SoftTargets | None = None) -> dict[str, Tensor]:
    """SigLIP loss of this worker's images against every worker's texts.

    image_features, text_features: (b, D) local, L2-normalised, the same b on every worker; logit_scale:
    scalar s (exponentiated, clamped); logit_bias: scalar b. dist_impl: "gather" or "ring" (same value and
    gradients). soft: PSD-sigmoid's targets, or None for the hard ones. Returns {"contrastive_loss": scalar}.
    """
    if dist_impl not in DIST_IMPLS:
        raise ValueError(f"dist_impl must be one of {DIST_IMPLS}, got {dist_impl!r}")
    b, rank = image_features.shape[0], get_rank()
    if dist_impl == "gather":
        all_text = all_gather_with_grad(text_features)
        total = block_loss(image_features, all_text, logit_scale, logit_bias, offset=rank * b, soft=soft)
    else:
        total = image_features.new_zeros(())
        for owner, chunk in ring_pass_with_grad(text_features):
            # Recomputed in backward: only this (b, b) block's logits exist at a time, not b x N of them.
            total = total + checkpoint(block_loss, image_features, chunk, logit_scale, logit_bias,
                                       offset=0 if owner == rank else None, soft=soft, text_offset=owner * b,
                                       use_reentrant=False)
    return {"contrastive_loss": total / b}
