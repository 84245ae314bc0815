"""A ClipTower from a ModelConfig: a named preset sized to the tokenizer, or a local pretrained dir."""

from __future__ import annotations

from raylpclip.config import ModelConfig
from raylpclip.models.clip import ClipTower, build_clip, load_clip


def build_tower(cfg: ModelConfig, *, tokenizer) -> ClipTower:
    if cfg.pretrained:
        return ClipTower(load_clip(cfg.pretrained))
    model = build_clip(
        cfg.preset,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        overrides=dict(cfg.overrides),
    )
    return ClipTower(model)
