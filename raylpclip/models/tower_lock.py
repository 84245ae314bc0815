"""Locked towers (LiT, Zhai et al. 2022): freeze the image and/or text tower of a CLIPModel.

A locked tower is its transformer and its projection: the image tower is `vision_model` (patch and
position embeddings, pre-norm, encoder layers, post-norm) plus `visual_projection`, as LiT and
open_clip's `lock_image` lock it; the text tower is `text_model` plus `text_projection`. The logit scale
(and SigLIP's bias) belong to neither and keep training.

Frozen means requires_grad=False, which is all the rest needs: the optimizer's groups take only
parameters that require grad (engine/optim.param_groups), and DDP leaves such parameters out of its
gradient buckets, so a locked tower costs no optimizer state, no gradient memory and no all-reduce
traffic. Gradient clipping sees only the optimizer's parameters. With the image tower wholly locked
autograd keeps none of its activations either (nothing in it needs a gradient).

`unlocked_layers` N > 0 keeps the last N encoder layers trainable together with what follows them (the
final LayerNorm and the projection): a trainable layer under a frozen head could only learn to fit the
head. (open_clip counts the projection as a group of its own; here N counts encoder layers only.)
`unlocked_norms` keeps every LayerNorm of the locked tower trainable (a few thousand parameters that
let the frozen features re-centre and re-scale).
"""

from __future__ import annotations

import logging

from torch import nn

from raylpclip.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


def tower_parts(clip: nn.Module, tower: str) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
    """(body, encoder layers, final norm, projection) of the "image" or "text" tower of a CLIPModel."""
    if tower == "image":
        body = clip.vision_model
        return body, body.encoder.layers, body.post_layernorm, clip.visual_projection
    body = clip.text_model
    return body, body.encoder.layers, body.final_layer_norm, clip.text_projection


def lock_tower(clip: nn.Module, tower: str, *, unlocked_layers: int = 0, unlocked_norms: bool = False) -> None:
    """Freeze the `tower` ("image" or "text") of `clip` in place, except its last `unlocked_layers` encoder
    layers with the final norm and projection after them, and with `unlocked_norms` its LayerNorms."""
    body, layers, final_norm, projection = tower_parts(clip, tower)
    key = f"model.lock_{tower}_unlocked_layers"
    if not 0 <= unlocked_layers <= len(layers):
        raise ConfigError(f"config key '{key}': got {unlocked_layers}, expected 0 to {len(layers)} "
                          f"(the {tower} tower's encoder layers)")
    body.requires_grad_(False)
    projection.requires_grad_(False)
    if unlocked_layers:
        for module in (*layers[len(layers) - unlocked_layers:], final_norm, projection):
            module.requires_grad_(True)
    if unlocked_norms:
        for module in body.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)


def lock_towers(clip: nn.Module, cfg: ModelConfig) -> None:
    """Apply `model.lock_image*` / `model.lock_text*` to `clip` (a CLIPModel) in place, before the optimizer
    and DDP are built (both read requires_grad once, when they are made)."""
    for tower in ("image", "text"):
        if getattr(cfg, f"lock_{tower}"):
            lock_tower(clip, tower, unlocked_layers=getattr(cfg, f"lock_{tower}_unlocked_layers"),
                       unlocked_norms=getattr(cfg, f"lock_{tower}_unlocked_norms"))
    frozen = sum(p.numel() for p in clip.parameters() if not p.requires_grad)
    if frozen:
        total = sum(p.numel() for p in clip.parameters())
        log.info("locked towers: %d of %d parameters frozen (%.1f%%)", frozen, total, 100.0 * frozen / total)
