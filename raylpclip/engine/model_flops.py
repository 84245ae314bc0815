"""Model FLOPs per sample of a CLIPModel, accelerators' peak FLOP/s, and model FLOPs utilisation (MFU).

Counted: the matrix products, at 2 FLOPs per multiply-add (the convention of the PaLM MFU and of
torch.utils.flop_counter; fvcore and open_clip's profile tables count one per multiply-add, so their
"GFLOPs" are half of these). Per encoder layer of width d, MLP width d_ff, over s tokens:

    Q, K, V and output projections   8 s d^2
    MLP (two matrices)               4 s d d_ff
    attention scores and weighted V  4 s^2 d

plus the patch embedding (a conv: 2 n_patches (3 P^2) d) and each tower's projection into the joint space
(2 d D). The vision tower sees s = 1 + kept patches (FLIP's patch dropout keeps round((1 - p) N) of N, the
rounding of models/patch_dropout.py); the text tower sees the training context length, padding included
(the kernels compute it). Not counted: LayerNorm, softmax, GELU, residual adds, embedding look-ups and
the loss's b x N logits; FlopCounterMode does not count the first four either, and together they are under
about 1% of a ViT-B tower's products (tests/unit/test_model_flops.py measures the remainder).

Training (see `train_flops_per_sample`) is forward + backward, where the backward of a product costs two
forwards (the gradient of its input and that of its weight), hence the usual 3x. Gradient checkpointing
recomputes a forward in backward: that recompute is NOT counted, so the figure is model FLOPs (MFU), not
hardware FLOPs (HFU), and a run does not look better for recomputing.
"""

from __future__ import annotations

import re
from typing import Any

from raylpclip.models.patch_dropout import kept_patches

TOWERS = ("image", "text")


def _layer_flops(tokens: int, width: int, mlp: int) -> tuple[int, int]:
    """(weight products, attention products) of one encoder layer's forward on one sample."""
    weights = 8 * tokens * width ** 2 + 4 * tokens * width * mlp
    return weights, 4 * tokens ** 2 * width


def _stages(clip_config, tower: str, *, context_length: int, patch_dropout: float) -> list[tuple[int, int]]:
    """A tower's forward as (weight FLOPs, attention FLOPs) per stage, in the order data flows: the embedding,
    each encoder layer, then the projection. Per-stage figures let the backward count follow what a locked
    tower trains (`train_flops_per_sample`)."""
    if tower == "image":
        cfg = clip_config.vision_config
        patches = (cfg.image_size // cfg.patch_size) ** 2
        embed = 2 * patches * (cfg.num_channels * cfg.patch_size ** 2) * cfg.hidden_size
        tokens = 1 + (kept_patches(patches, patch_dropout) if patch_dropout > 0 else patches)
    else:
        cfg = clip_config.text_config
        embed, tokens = 0, context_length  # token and position embeddings are look-ups
    layer = _layer_flops(tokens, cfg.hidden_size, cfg.intermediate_size)
    projection = 2 * cfg.hidden_size * clip_config.projection_dim
    return [(embed, 0), *[layer] * cfg.num_hidden_layers, (projection, 0)]


def forward_flops_per_sample(clip_config, *, context_length: int, patch_dropout: float = 0.0) -> dict[str, int]:
    """Forward FLOPs of one (image, caption) pair through a CLIPModel of `clip_config` (transformers'
    CLIPConfig): {"image": the vision tower with its patch embedding, "text": the text tower, "projections":
    both projections into the joint space, "total"}. `context_length`: the captions' padded length in training
    (data.context_length), not the model's max_position_embeddings. `patch_dropout`: model.patch_dropout."""
    out: dict[str, int] = {"projections": 0}
    for tower in TOWERS:
        stages = _stages(clip_config, tower, context_length=context_length, patch_dropout=patch_dropout)
        out[tower] = sum(w + a for w, a in stages[:-1])
        out["projections"] += stages[-1][0]
    out["total"] = out["image"] + out["text"] + out["projections"]
    return out


def _train_stage_flops(stages: list[tuple[int, int]], trains: list[bool], grad_in: list[bool]) -> int:
    """Forward + backward FLOPs of a tower's stages. trains[i]: stage i's weights are trained (their gradient
    costs one more forward of its weight products); grad_in[i]: a gradient must reach stage i's input (its
    input gradient costs one more forward of its weight products, two of its attention products: both
    operands of QK^T and of AV carry gradients). The embedding's input (pixels, token ids) never needs one."""
    total = 0
    for (weights, attention), train, grad in zip(stages, trains, grad_in):
        total += weights + attention
        if train:
            total += weights
        if grad:
            total += weights + 2 * attention
    return total


def train_flops_per_sample(
    clip_config,
    *,
    context_length: int,
    patch_dropout: float = 0.0,
    lock_image: bool = False,
    lock_image_unlocked_layers: int = 0,
    lock_image_unlocked_norms: bool = False,
    lock_text: bool = False,
    lock_text_unlocked_layers: int = 0,
    lock_text_unlocked_norms: bool = False,
    teacher_forwards: int = 0,
) -> dict[str, int]:
    """Model FLOPs of one training sample (forward + backward), {"image", "text", "projections", "total"}, as
    `forward_flops_per_sample` splits them ("image"/"text" here include their tower's projection, since a lock
    freezes it with the tower; "projections" is their forward share, for reference only).

    A trainable tower costs 3x its forward, less one forward of the patch embedding (no gradient of the
    pixels is computed). The lock keys are model.lock_* (models/tower_lock.py), counted precisely, per encoder
    layer, by what autograd then computes:
    - a wholly locked tower (no unlocked layers, no unlocked norms): its forward only, 1x (nothing in it
      needs a gradient, so autograd records nothing);
    - `unlocked_layers` N: the frozen layers below the last N run forward only (1x); the last N, the final
      norm and the projection train (3x; the lowest trained layer's input gradient is counted too, since its
      own first LayerNorm trains and needs it);
    - `unlocked_norms`: every layer's first LayerNorm trains, so a gradient flows through every frozen layer
      to its input without weight gradients: 2x its weight products, 3x its attention products.
    `teacher_forwards`: extra no-grad forwards of both towers per sample (PSD's EMA teacher: 1), at 1x.
    Gradient checkpointing's recompute is not counted (model FLOPs, not hardware FLOPs: module docstring).
    """
    locks = {
        "image": (lock_image, lock_image_unlocked_layers, lock_image_unlocked_norms),
        "text": (lock_text, lock_text_unlocked_layers, lock_text_unlocked_norms),
    }
    forward = forward_flops_per_sample(clip_config, context_length=context_length, patch_dropout=patch_dropout)
    out: dict[str, int] = {"projections": forward["projections"]}
    for tower in TOWERS:
        stages = _stages(clip_config, tower, context_length=context_length, patch_dropout=patch_dropout)
        layers = len(stages) - 2
        locked, unlocked, norms = locks[tower]
        if not locked:
            trains = [True] * len(stages)
        else:
            first_trained = 1 + layers - unlocked  # stage index of the lowest unlocked layer (or the projection)
            trains = [i >= first_trained and unlocked > 0 for i in range(len(stages))]
        # A gradient reaches a stage's input when anything before its products trains: an earlier stage, or
        # its own leading LayerNorm (a layer's first norm; the projection's final norm), trained by the
        # layer's unlocking or by unlocked norms. The embedding's input never needs one.
        grad_in = [i > 0 and (any(trains[:i + 1]) or (locked and norms)) for i in range(len(stages))]
        out[tower] = _train_stage_flops(stages, trains, grad_in)
    out["total"] = out["image"] + out["text"] + teacher_forwards * forward["total"]
    return out


def lock_kwargs(model_cfg: Any) -> dict[str, Any]:
    """model.lock_* of a ModelConfig (read by attribute, so this module needs no config import) and its
    patch dropout, as keyword arguments of `train_flops_per_sample`."""
    keys = [f"lock_{t}{s}" for t in TOWERS for s in ("", "_unlocked_layers", "_unlocked_norms")]
    return {key: getattr(model_cfg, key) for key in keys} | {"patch_dropout": model_cfg.patch_dropout}


# Peak dense (not 2:4-sparse) 16-bit tensor-core TFLOP/s, from the vendors' data sheets: bf16 with fp32
# accumulation where the chip has bf16, else fp16 (V100, T4). First match wins: specific names before the
# families they belong to. torch.cuda.get_device_name() spells them e.g. "NVIDIA H100 80GB HBM3" (SXM),
# "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "Tesla V100-SXM2-16GB", "AMD Instinct MI300X".
PEAK_TFLOPS: list[tuple[str, str, float]] = [
    (r"GH200", "GH200", 989.0),
    (r"H100.*PCIE", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100|H800", "H100 SXM", 989.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"H20\b", "H20", 148.0),
    (r"GB200", "GB200", 2500.0),
    (r"B200", "B200", 2250.0),
    (r"A100|A800", "A100", 312.0),
    (r"A10G\b", "A10G", 125.0),  # AWS publishes no figure of its own; NVIDIA A10's. Override if yours differs.
    (r"A10\b", "A10", 125.0),
    (r"L40S", "L40S", 362.0),
    (r"L40\b", "L40", 181.0),
    (r"L20\b", "L20", 119.5),
    (r"L4\b", "L4", 121.0),
    (r"RTX 6000 ADA", "RTX 6000 Ada", 364.0),
    (r"RTX A6000", "RTX A6000", 155.0),
    (r"RTX 4090", "RTX 4090", 165.0),  # GeForce: fp32 accumulation at half the fp16-accumulate rate
    (r"V100.*PCIE", "V100 PCIe (fp16)", 112.0),
    (r"V100", "V100 SXM2 (fp16)", 125.0),
    (r"\bT4\b", "T4 (fp16)", 65.0),
    (r"MI300X|MI325X", "MI300X", 1307.0),
    (r"MI300A", "MI300A", 980.0),
    (r"MI250X", "MI250X", 383.0),
]


def peak_name(device_name: str) -> str | None:
    """The PEAK_TFLOPS row a torch.cuda.get_device_name() string matches (None: unknown)."""
    row = _peak_row(device_name)
    return row[1] if row else None


def _peak_row(device_name: str) -> tuple[str, str, float] | None:
    return next((row for row in PEAK_TFLOPS if re.search(row[0], device_name, re.IGNORECASE)), None)


def peak_flops(device_name: str, *, override_tflops: float = 0.0) -> float | None:
    """Peak dense bf16 FLOP/s of one device: `override_tflops` (train.peak_tflops) when > 0, else the table's
    figure for `device_name` (torch.cuda.get_device_name()); None when unknown (then no MFU is shown)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    row = _peak_row(device_name)
    return row[2] * 1e12 if row else None


def mfu(samples_per_s: float, flops_per_sample: float, *, peak_flops_per_device: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all `devices` together (0 to 1)."""
    if peak_flops_per_device <= 0 or devices < 1:
        raise ValueError(f"mfu: peak_flops_per_device={peak_flops_per_device} and devices={devices} must be positive")
    return samples_per_s * flops_per_sample / (devices * peak_flops_per_device)
