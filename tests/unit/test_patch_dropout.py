"""Patch dropout (models/patch_dropout.py): the tokens that enter the vision encoder in training and in
eval, a different random subset per image, gradients, p = 0 bit-identical to no dropout, the unmasked
tuning phase (train.patch_dropout_until_step), the train switches it must compose with (grad
checkpointing, bf16, torch.compile), a plain exported CLIPModel, and the config's checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from raylpclip.config import ConfigError, PretrainConfig, PSDConfig, load_config
from raylpclip.engine.loop import autocast
from raylpclip.engine.pretrain_task import PretrainTask
from raylpclip.models.clip import ClipTower, build_clip, export_clip, load_clip
from raylpclip.models.patch_dropout import drop_patches, kept_patches, patch_dropout_of, set_patch_dropout

# 32 px images in 4 px patches: 64 patch tokens + the class token.
TINY = {"vision.image_size": 32, "vision.patch_size": 4, "vision.hidden_size": 32, "vision.num_hidden_layers": 2,
        "vision.num_attention_heads": 2, "vision.intermediate_size": 64, "text.hidden_size": 32,
        "text.num_hidden_layers": 1, "text.num_attention_heads": 2, "text.intermediate_size": 64,
        "text.max_position_embeddings": 8, "projection_dim": 16}
PATCHES = 64


def _tower(**extra) -> ClipTower:
    torch.manual_seed(0)
    return ClipTower(build_clip("tiny", vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=3,
                                overrides={**TINY, **extra})).train()


def _images(b: int = 4) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _encoder_tokens(tower: ClipTower) -> list[int]:
    """Token counts of each forward's sequence entering the encoder (pre_layrnorm's output), appended live."""
    seen: list[int] = []
    tower.clip.vision_model.pre_layrnorm.register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    return seen


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75, 0.9])
def test_tokens_entering_the_encoder_in_training_and_in_eval(p):
    tower = _tower()
    set_patch_dropout(tower.clip, p)
    seen = _encoder_tokens(tower)
    tower.encode_image(_images())
    with torch.no_grad():
        tower.eval().encode_image(_images())
    # 0.25: 48, 0.5: 32, 0.75: 16, 0.9: round(6.4) = 6 patches kept, with the class token
    assert seen == [1 + round((1 - p) * PATCHES), 1 + PATCHES]
    assert kept_patches(PATCHES, p) == round((1 - p) * PATCHES) and kept_patches(10, 0.99) == 1


def test_each_image_keeps_its_own_random_patches():
    # Token i carries the value i everywhere, so the kept tokens name their positions.
    b, width = 16, 3
    tokens = torch.arange(1 + PATCHES, dtype=torch.float32).view(1, -1, 1).expand(b, -1, width).clone()
    torch.manual_seed(0)
    kept = drop_patches(tokens, 0.5)
    assert kept.shape == (b, 1 + 32, width)
    positions = kept[:, :, 0].long()
    assert (positions[:, 0] == 0).all()  # the class token first, in every row
    patches = positions[:, 1:]
    assert ((patches >= 1) & (patches <= PATCHES)).all() and (patches.diff(dim=1) > 0).all()  # distinct, in order
    assert torch.equal(kept, tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, width)))
    assert len({tuple(row.tolist()) for row in patches}) == b  # every image its own subset
    # Across many draws every patch position is kept about half the time (uniform subsets).
    torch.manual_seed(1)
    counts = torch.zeros(PATCHES + 1)
    for _ in range(50):
        counts.index_add_(0, drop_patches(tokens, 0.5)[:, 1:, 0].long().flatten(), torch.ones(b * 32))
    share = counts[1:] / (50 * b)
    assert share.min() > 0.3 and share.max() < 0.7


def test_gradients_reach_the_kept_tokens_only():
    tower = _tower()
    set_patch_dropout(tower.clip, 0.5)
    tower.encode_image(_images(1)).sum().backward()
    emb = tower.clip.vision_model.embeddings
    touched = emb.position_embedding.weight.grad.abs().sum(dim=1).ne(0)
    assert int(touched.sum()) == 1 + 32 and bool(touched[0])  # the class position and the 32 kept patches
    assert emb.patch_embedding.weight.grad.abs().sum() > 0 and emb.class_embedding.grad.abs().sum() > 0
    vision = [p for n, p in tower.named_parameters() if "vision_model" in n or "visual_projection" in n]
    assert all(p.grad is not None for p in vision)


def test_zero_dropout_is_bit_identical_to_none():
    plain, dropped = _tower(), _tower()
    assert set_patch_dropout(plain.clip, 0.0) is None and not plain.clip.vision_model.embeddings._forward_hooks
    set_patch_dropout(dropped.clip, 0.5)
    with torch.no_grad():
        want = plain.encode_image(_images())
        assert not torch.equal(dropped.encode_image(_images()), want)
        set_patch_dropout(dropped.clip, 0.0)  # as the tuning phase turns it off
        assert torch.equal(dropped.encode_image(_images()), want)
        set_patch_dropout(dropped.clip, 0.5)
        assert torch.equal(dropped.eval().encode_image(_images()), plain.eval().encode_image(_images()))
    assert len(dropped.clip.vision_model.embeddings._forward_hooks) == 1  # retuned, never attached twice
    assert patch_dropout_of(dropped.clip) == 0.5 and patch_dropout_of(plain.clip) == 0.0


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, 300, (b, 8), generator=torch.Generator().manual_seed(2))
    ids[:, 0], ids[:, 6], ids[:, 7:] = 0, 1, 3
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    image = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return {"image": image, "input_ids": ids, "attention_mask": mask}


def test_until_step_ends_dropout_for_the_rest_of_the_run():
    tower = _tower()
    set_patch_dropout(tower.clip, 0.5)
    task = PretrainTask(tower, psd=PSDConfig(a_max=0.0), total_steps=6, seed=0, rank=0, patch_dropout_until_step=3)
    seen = _encoder_tokens(tower)
    for step in range(6):
        task.losses(_batch(), step=step)
    assert seen == [33, 33, 33, 65, 65, 65]
    whole = PretrainTask(_tower(), psd=PSDConfig(a_max=0.0), total_steps=6, seed=0, rank=0)
    set_patch_dropout(whole.model.clip, 0.5)
    seen = _encoder_tokens(whole.model)
    whole.losses(_batch(), step=5)  # until_step 0: the whole run
    assert seen == [33]


def _grads(tower: ClipTower, *, seed: int, precision: str = "fp32") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with autocast(precision, torch.device("cpu")):
        features = tower.encode_image(_images())
    features.float().square().sum().backward()
    return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}


def test_composes_with_grad_checkpointing_and_bf16():
    plain, checkpointed = _tower(), _tower()
    for tower in (plain, checkpointed):
        set_patch_dropout(tower.clip, 0.5)
    checkpointed.enable_grad_checkpointing()
    seen = _encoder_tokens(checkpointed)
    want, got = _grads(plain, seed=5), _grads(checkpointed, seed=5)
    # The draw happens once, outside the checkpointed layers: their recomputation sees the same tokens.
    assert seen == [33] and set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    low = _set(_tower(), 0.5)
    seen = _encoder_tokens(low)
    bf16 = _grads(low, seed=5, precision="bf16")
    assert seen == [33] and all(torch.isfinite(g).all() for g in bf16.values())
    assert bf16["clip.visual_projection.weight"].abs().sum() > 0


def _set(tower: ClipTower, p: float) -> ClipTower:
    set_patch_dropout(tower.clip, p)
    return tower


def test_composes_with_torch_compile():
    # aot_eager traces the hook, the draw and the gather into the forward and backward graphs as inductor
    # would, without a C++ compiler; the same seed then draws the same patches as eager.
    eager, compiled = _set(_tower(), 0.5), _set(_tower(), 0.5)
    compiled.clip.vision_model.compile(backend="aot_eager")
    want, got = _grads(eager, seed=7), _grads(compiled, seed=7)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    set_patch_dropout(compiled.clip, 0.0)  # the tuning phase: the guard on p recompiles, without dropout
    with torch.no_grad():
        assert torch.equal(compiled.encode_image(_images()), _tower().encode_image(_images()))


def test_export_is_a_plain_clip_model(tmp_path):
    tower = _set(_tower(), 0.5)
    export_clip(tower.clip, str(tmp_path))
    loaded = load_clip(str(tmp_path))
    assert type(loaded).__name__ == "CLIPModel" and not loaded.vision_model.embeddings._forward_hooks
    assert "patch_dropout" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    want = tower.eval().clip.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    # A deep copy (the EMA copies) carries its own hook; in eval mode, as the EMA keeps it, it drops nothing.
    ema = copy.deepcopy(tower.train()).eval()
    seen = _encoder_tokens(ema)
    with torch.no_grad():
        ema.encode_image(_images())
    assert seen == [65] and patch_dropout_of(ema.clip) == 0.5


@pytest.mark.parametrize("overrides, key", [
    (["model.patch_dropout=0.95"], "model.patch_dropout"),
    (["model.patch_dropout=-0.1"], "model.patch_dropout"),
    (["train.patch_dropout_until_step=10"], "train.patch_dropout_until_step"),
    (["model.patch_dropout=0.5", "train.patch_dropout_until_step=-1"], "train.patch_dropout_until_step"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(PretrainConfig, None, overrides)
    assert load_config(PretrainConfig, None, ["model.patch_dropout=0.5", "train.patch_dropout_until_step=900"])
