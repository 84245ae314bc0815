"""A ClipTower from a ModelConfig: a named preset sized to the tokenizer, a local pretrained dir, or an open_clip
checkpoint file converted in memory (the conversion `raylpclip convert open-clip` writes to disk)."""

from __future__ import annotations

import math

from transformers import CLIPModel

from raylpclip.config import LossConfig, ModelConfig
from raylpclip.config.checks import is_openclip_checkpoint
from raylpclip.models.clip import ClipTower, build_clip, load_clip
from raylpclip.models.openclip_weights import load_openclip


def build_tower(cfg: ModelConfig, *, tokenizer, loss: LossConfig | None = None) -> ClipTower:
    """With `loss.kind == "siglip"` the tower gets SigLIP's logit bias (ClipTower.logit_bias) and a new model
    SigLIP's initial scale, `loss.siglip_scale_init` (unless model.overrides sets logit_scale_init_value).
    A pretrained model keeps its own scale, and its bias when its config.json holds one (a SigLIP export)."""
    siglip = loss is not None and loss.kind == "siglip"
    if cfg.pretrained:
        clip = load_pretrained(cfg.pretrained, tokenizer=tokenizer)
        if not siglip:
            return ClipTower(clip)
        saved = getattr(clip.config, "logit_bias", None)
        return ClipTower(clip, logit_bias=loss.siglip_bias_init if saved is None else saved)
    overrides = dict(cfg.overrides)
    if siglip:
        overrides.setdefault("logit_scale_init_value", math.log(loss.siglip_scale_init))
    model = build_clip(
        cfg.preset,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        overrides=overrides,
    )
    return ClipTower(model, logit_bias=loss.siglip_bias_init if siglip else None)


def load_pretrained(path: str, *, tokenizer) -> CLIPModel:
    """`model.pretrained`: a save_pretrained directory, or an open_clip checkpoint file (its open_clip_config.json
    beside it). The tokenizer must fit the text tower: an id past its embeddings would fail deep in a worker's
    first step, and another EOS id would pool every caption at the wrong token."""
    clip = load_openclip(path)[0] if is_openclip_checkpoint(path) else load_clip(path)
    text = clip.config.text_config
    if len(tokenizer) > text.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, model.pretrained {path!r} embeds "
                         f"{text.vocab_size}: set model.tokenizer to the tokenizer the model was trained with")
    # eos_token_id 2 is transformers' legacy config (pooling at argmax(ids)): its ids name no tokenizer's tokens.
    if text.eos_token_id != 2 and tokenizer.eos_token_id != text.eos_token_id:
        raise ValueError(f"the tokenizer's EOS id {tokenizer.eos_token_id} is not the one model.pretrained {path!r} "
                         f"pools at ({text.eos_token_id}): set model.tokenizer to the tokenizer the model was trained with")
    return clip
