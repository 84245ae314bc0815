"""engine/model_flops.py against torch's FLOP counter on real forwards and backwards of a small tower, the
published ViT-B figures, the peak table and the MFU arithmetic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPModel

from raylpclip.engine.model_flops import (forward_flops_per_sample, lock_kwargs, mfu, peak_flops, peak_name,
                                          train_flops_per_sample)
from raylpclip.models.clip import ClipTower, build_clip
from raylpclip.models.patch_dropout import set_patch_dropout
from raylpclip.models.tower_lock import lock_tower

BATCH, CONTEXT = 4, 16
SPECIAL = dict(vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _tower() -> ClipTower:
    """The tiny preset at 32 px in 4 px patches (65 image tokens), with eager attention: its QK^T and AV are
    plain batched matmuls, which FlopCounterMode counts on CPU (it has no formula for the CPU SDPA kernel)."""
    torch.manual_seed(0)
    config = copy.deepcopy(build_clip("tiny", **SPECIAL, overrides={"vision.image_size": 32,
                                                                    "vision.patch_size": 4}).config)
    return ClipTower(CLIPModel._from_config(config, attn_implementation="eager"))


def _batch():
    ids = torch.randint(3, 300, (BATCH, CONTEXT))
    ids[:, -1] = SPECIAL["eos_token_id"]
    return torch.randn(BATCH, 3, 32, 32), ids, torch.ones(BATCH, CONTEXT, dtype=torch.long)


def _counted(tower: ClipTower, *, backward: bool) -> float:
    """FLOPs per sample that FlopCounterMode sees in the tower's forward (and backward)."""
    batch = _batch()
    with FlopCounterMode(display=False) as counter:
        out = tower(*batch)
        if backward:
            (out["image_features"].sum() + out["text_features"].sum()).backward()
    return counter.get_total_flops() / BATCH


def test_forward_formula_matches_the_flop_counter():
    tower = _tower()
    formula = forward_flops_per_sample(tower.clip.config, context_length=CONTEXT)
    # Exact: the counter, like the formula, counts matmuls and convs only (not LayerNorm, softmax, GELU).
    assert _counted(tower, backward=False) == pytest.approx(formula["total"], rel=1e-6)
    assert formula["total"] == formula["image"] + formula["text"] + formula["projections"]


def test_training_is_about_three_forwards_and_matches_the_counter():
    tower = _tower()
    forward = forward_flops_per_sample(tower.clip.config, context_length=CONTEXT)["total"]
    train = train_flops_per_sample(tower.clip.config, context_length=CONTEXT)["total"]
    counted = _counted(tower, backward=True)
    assert counted == pytest.approx(train, rel=1e-6)
    # Just under 3x: the pixels get no gradient, so the patch embedding's backward is one forward, not two.
    assert 2.95 * forward < counted < 3.0 * forward


def test_patch_dropout_half_roughly_halves_the_vision_tower():
    tower = _tower()
    set_patch_dropout(tower.clip, 0.5)
    tower.train()
    formula = forward_flops_per_sample(tower.clip.config, context_length=CONTEXT, patch_dropout=0.5)
    assert _counted(tower, backward=False) == pytest.approx(formula["total"], rel=1e-6)
    full = forward_flops_per_sample(tower.clip.config, context_length=CONTEXT)["image"]
    # 33 of 65 tokens, and the patch embedding still runs on every patch: a little over half.
    assert 0.45 < formula["image"] / full < 0.55


@pytest.mark.parametrize("unlocked_layers, unlocked_norms", [(0, False), (1, False), (0, True), (2, True)])
def test_locked_image_tower_counts_what_autograd_computes(unlocked_layers, unlocked_norms):
    tower = _tower()
    lock_tower(tower.clip, "image", unlocked_layers=unlocked_layers, unlocked_norms=unlocked_norms)
    train = train_flops_per_sample(tower.clip.config, context_length=CONTEXT, lock_image=True,
                                   lock_image_unlocked_layers=unlocked_layers,
                                   lock_image_unlocked_norms=unlocked_norms)
    assert _counted(tower, backward=True) == pytest.approx(train["total"], rel=1e-6)
    if (unlocked_layers, unlocked_norms) == (0, False):  # wholly frozen: forward only
        forward = forward_flops_per_sample(tower.clip.config, context_length=CONTEXT)
        assert train["image"] == forward["image"] + forward["projections"] - 2 * 128 * 128  # less the text projection


def test_locked_text_tower_is_forward_only():
    tower = _tower()
    lock_tower(tower.clip, "text")
    train = train_flops_per_sample(tower.clip.config, context_length=CONTEXT, lock_text=True)
    assert _counted(tower, backward=True) == pytest.approx(train["total"], rel=1e-6)


def test_teacher_forward_adds_one_forward():
    config = _tower().clip.config
    forward = forward_flops_per_sample(config, context_length=CONTEXT)["total"]
    plain = train_flops_per_sample(config, context_length=CONTEXT)["total"]
    assert train_flops_per_sample(config, context_length=CONTEXT, teacher_forwards=1)["total"] == plain + forward


def test_lock_kwargs_reads_the_model_section():
    from raylpclip.config import ModelConfig

    cfg = ModelConfig(lock_image=True, lock_image_unlocked_layers=2, patch_dropout=0.5)
    kwargs = lock_kwargs(cfg)
    assert kwargs["lock_image"] and kwargs["lock_image_unlocked_layers"] == 2 and kwargs["patch_dropout"] == 0.5
    train_flops_per_sample(_tower().clip.config, context_length=CONTEXT, **kwargs)  # every key is accepted


@pytest.mark.parametrize("preset, image_gmacs, text_gmacs", [("vit-b-32", 4.41, 2.96), ("vit-b-16", 17.58, 2.96)])
def test_vit_b_figures_match_open_clip_profile(preset, image_gmacs, text_gmacs):
    """open_clip's model profile (fvcore) gives multiply-adds at 224 px and 77 tokens: ViT-B-32 image 4.41 G,
    ViT-B-16 image 17.58 G, text 2.96 G. Ours are 2 FLOPs each, within 1% (fvcore skips a few small ops)."""
    with torch.device("meta"):
        clip = build_clip(preset, vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    forward = forward_flops_per_sample(clip.config, context_length=77)
    train = train_flops_per_sample(clip.config, context_length=77)
    print(f"{preset}: forward image {forward['image'] / 1e9:.2f} text {forward['text'] / 1e9:.2f} "
          f"total {forward['total'] / 1e9:.2f} GFLOPs; train {train['total'] / 1e9:.2f} GFLOPs per sample")
    assert forward["image"] / 2e9 == pytest.approx(image_gmacs, rel=0.01)
    assert forward["text"] / 2e9 == pytest.approx(text_gmacs, rel=0.01)
    assert 2.95 < train["total"] / forward["total"] < 3.0


@pytest.mark.parametrize("name, label, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0),
    ("NVIDIA H200", "H200 SXM", 989.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA A10G", "A10G", 125.0),
    ("NVIDIA L40S", "L40S", 362.0),
    ("NVIDIA L4", "L4", 121.0),
    ("Tesla V100-SXM2-16GB", "V100 SXM2 (fp16)", 125.0),
    ("AMD Instinct MI300X", "MI300X", 1307.0),
])
def test_peak_lookup_by_device_name(name, label, tflops):
    assert peak_name(name) == label
    assert peak_flops(name) == tflops * 1e12


def test_unknown_device_has_no_peak_unless_given():
    assert peak_flops("Some Future Accelerator") is None and peak_name("cpu") is None
    assert peak_flops("Some Future Accelerator", override_tflops=100.0) == 100e12
    assert peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500.0) == 500e12  # the config key wins


def test_mfu_arithmetic():
    # 1000 samples/s x 44.1 GFLOPs on 2 devices of 989 TFLOP/s
    assert mfu(1000.0, 44.1e9, peak_flops_per_device=989e12, devices=2) == pytest.approx(44.1e12 / 1978e12)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, peak_flops_per_device=0.0, devices=1)
