"""open_clip model configs read as transformers `CLIPConfig`s, with a clear refusal for what HF CLIP cannot express.

open_clip's hub repositories publish `open_clip_config.json` = {"model_cfg": the kwargs of `open_clip.CLIP(...)`,
"preprocess_cfg": mean/std/size/interpolation/resize_mode}; a plain model config JSON (open_clip's
`model_configs/*.json`) holds the model_cfg alone. HF's CLIPModel is OpenAI's ViT CLIP: a ViT image tower
pooled at its class token, a causal text transformer pooled at one token, linear projections without bias,
LayerNorm everywhere, one activation. Every open_clip option that changes the forward pass away from that
is refused here by name, and unknown keys are refused too: a key this converter does not know may change
the model, and a conversion that silently computes other features is worse than none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from transformers import CLIPConfig

from raylpclip.data.transforms import CLIP_MEAN, CLIP_STD

CONFIG_FILE = "open_clip_config.json"  # beside the weights in open_clip's hub repositories
_LEGACY_EOS_ID = 2  # transformers pools at argmax(input_ids) for this EOS id, whatever the config means


class OpenClipConfigError(ValueError):
    """An open_clip model config that transformers' CLIPModel cannot express (the message names the key)."""


@dataclass
class OpenClipConfig:
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the JSON file it was read from

    @property
    def vision(self) -> dict[str, Any]:
        return dict(self.model_cfg.get("vision_cfg") or {})

    @property
    def text(self) -> dict[str, Any]:
        return dict(self.model_cfg.get("text_cfg") or {})

    def text_projection_is_identity(self) -> bool:
        """open_clip's `proj_type: none` text tower has no projection; HF CLIP always has one (the identity then)."""
        return self.text.get("proj_type", "linear") == "none"


def read_openclip_config(checkpoint: str, config: str | None = None) -> OpenClipConfig:
    """The model config of `checkpoint`: `config` when given (hub layout or a plain model config), else the
    `open_clip_config.json` beside the checkpoint."""
    path = config or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no open_clip model config at {path!r}: put the model's {CONFIG_FILE} beside the "
                                "checkpoint, or give its model config JSON (`raylpclip convert open-clip ... --config`)")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise OpenClipConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if "model_cfg" in raw:
        return OpenClipConfig(dict(raw["model_cfg"]), dict(raw.get("preprocess_cfg") or {}), path)
    if "embed_dim" not in raw:
        raise OpenClipConfigError(f"{path}: expected {{'model_cfg': ...}} or an open_clip model config with "
                                  f"'embed_dim', 'vision_cfg' and 'text_cfg'; got keys {sorted(raw)}")
    return OpenClipConfig(dict(raw), {}, path)


def _off(value: Any) -> bool:
    return not value


def _is(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value in allowed


# What each open_clip block option adds to a transformer layer; HF CLIP's layers have none of it.
_BLOCK_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ls_init_value": (_is(None), "layer scale (learned gammas on each residual branch)"),
    "block_type": (_is(None, "default", "custom"), "a transformer block type other than open_clip's default"),
    "qk_norm": (_off, "LayerNorm on queries and keys"),
    "scaled_cosine_attn": (_off, "scaled cosine attention"),
    "scale_heads": (_off, "per-head attention scales"),
    "scale_attn_inner": (_off, "a LayerNorm inside attention"),
    "scale_attn": (_off, "a LayerNorm after attention"),
    "scale_fc": (_off, "a LayerNorm inside the MLP"),
}
_VISION_RULES = {
    **_BLOCK_RULES,
    "layers": (lambda v: isinstance(v, int), "a ResNet image tower (layers per stage); HF CLIP's image tower is a ViT"),
    "timm_model_name": (_off, "a timm image tower"),
    "attentional_pool": (_off, "attentional pooling of the image tokens"),
    "no_ln_pre": (_off, "an image tower without the LayerNorm before its transformer"),
    "pos_embed_type": (_is("learnable", "sin_cos_2d"), "position embeddings other than one added table"),
    "pool_type": (_is("tok"), "image pooling other than at the class token ('tok')"),
    "input_patchnorm": (_off, "a LayerNorm on the patches"),
    "global_average_pool": (_off, "average pooling of the image tokens"),
}
# Read below, or without effect on the features: patch dropout is training only; LayerNorm acts per token, so
# normalising before or after picking the class token is the same; the rest configures other outputs/towers.
_VISION_FREE = {"width", "head_width", "mlp_ratio", "patch_size", "image_size", "patch_dropout", "final_ln_after_pool",
                "attn_pooler_queries", "attn_pooler_heads", "output_tokens", "act_kwargs", "norm_kwargs",
                "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}
_TEXT_RULES = {
    **_BLOCK_RULES,
    "hf_model_name": (_off, "a Hugging Face text tower (HF CLIP's text tower is CLIP's own transformer)"),
    "embed_cls": (_off, "a class token appended to the text (CoCa)"),
    "no_causal_mask": (_off, "a bidirectional text tower (HF CLIP's is causal)"),
    "pool_type": (_is("argmax", "eos"), "text pooling other than at the end-of-text token ('argmax' or 'eos')"),
    "proj_bias": (_off, "a text projection with a bias"),
    "proj_type": (_is("linear", "none"), "a text projection other than linear or none"),
}
_TEXT_FREE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "hf_tokenizer_name",
              "tokenizer_mode", "tokenizer_kwargs", "pad_id", "eos_id", "final_ln_after_pool", "output_tokens",
              "act_kwargs", "norm_kwargs", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_TOP_RULES = {
    # A learned logit bias (SigLIP's sigmoid loss): HF CLIP has no weight for it; the converted directory keeps it
    # in config.json (`logit_bias`), as raylpclip's own SigLIP exports do, and loss.kind=siglip starts from it.
    "init_logit_bias": (lambda v: v is None or isinstance(v, (int, float)), "a logit bias other than a number"),
    "multimodal_cfg": (_off, "a multimodal text decoder (CoCa)"),
}
_TOP_FREE = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "init_logit_scale",
             "nonscalar_logit_scale", "custom_text", "output_dict"}


def _check(values: dict[str, Any], rules: dict, free: set[str], where: str, source: str) -> None:
    for key, value in values.items():
        if key in rules:
            ok, feature = rules[key]
            if not ok(value):
                raise OpenClipConfigError(f"{source}: {where}{key} = {value!r}: transformers' CLIPModel cannot "
                                          f"express {feature}")
        elif key not in free:
            raise OpenClipConfigError(f"{source}: {where}{key} is unknown to this converter (open_clip 3.3's CLIP "
                                      "keys only); it may change the model in a way HF CLIP cannot express")


def _square(value: Any, key: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise OpenClipConfigError(f"{source}: {key} = {value!r}: HF CLIP takes square images and patches only")
        value = value[0]
    return int(value)


def _activation(quick_gelu: bool, kwargs: dict | None, key: str, source: str) -> str:
    """HF's `hidden_act` for open_clip's QuickGELU or nn.GELU(**act_kwargs)."""
    kwargs = dict(kwargs or {})
    approximate = kwargs.pop("approximate", "none")
    if kwargs or (quick_gelu and approximate != "none") or approximate not in ("none", "tanh"):
        raise OpenClipConfigError(f"{source}: {key} = {kwargs or approximate!r}: HF CLIP expresses QuickGELU, GELU "
                                  "and GELU's tanh approximation only")
    if quick_gelu:
        return "quick_gelu"
    return "gelu" if approximate == "none" else "gelu_pytorch_tanh"


def _norm_eps(kwargs: dict | None, key: str, source: str) -> float:
    kwargs = dict(kwargs or {})
    eps = kwargs.pop("eps", 1e-5)  # torch's LayerNorm default, open_clip's too
    if kwargs:
        raise OpenClipConfigError(f"{source}: {key} = {kwargs!r}: HF CLIP's LayerNorm takes an eps only (custom norms "
                                  "cannot be expressed)")
    return float(eps)


def _text_special_ids(text: dict[str, Any], vocab_size: int, source: str) -> dict[str, int | None]:
    """The ids HF CLIP's text tower is told. It pools at the first `eos_token_id` of each row: open_clip's
    'argmax' pooling is the same when the end-of-text token is the vocabulary's largest id (OpenAI's CLIP BPE,
    open_clip's default tokenizer, which pads with 0) and every row holds one (raylpclip's `tokenize` keeps it)."""
    if text.get("pool_type", "argmax") == "eos":
        eos = int(text.get("eos_id", 2))
        if eos == _LEGACY_EOS_ID:
            raise OpenClipConfigError(f"{source}: model_cfg.text_cfg.eos_id = 2: transformers reads EOS id 2 as its "
                                      "legacy config and pools at argmax(input_ids) instead of at the EOS")
        return {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": eos}
    if text.get("hf_tokenizer_name"):
        raise OpenClipConfigError(
            f"{source}: model_cfg.text_cfg pools at argmax(input_ids) over the ids of the Hugging Face tokenizer "
            f"{text['hf_tokenizer_name']!r}: HF CLIP pools at the first EOS, the same only for OpenAI's CLIP BPE")
    # CLIP's BPE ends with <|startoftext|>, <|endoftext|>; transformers' CLIPTokenizer pads with <|endoftext|>.
    return {"bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1}


def hf_clip_config(oc: OpenClipConfig) -> CLIPConfig:
    """The CLIPConfig whose CLIPModel computes what `open_clip.CLIP(**oc.model_cfg)` computes (or a clear error)."""
    top, vision, text, src = oc.model_cfg, oc.vision, oc.text, oc.source
    _check(top, _TOP_RULES, _TOP_FREE, "model_cfg.", src)
    _check(vision, _VISION_RULES, _VISION_FREE, "model_cfg.vision_cfg.", src)
    _check(text, _TEXT_RULES, _TEXT_FREE, "model_cfg.text_cfg.", src)
    if "embed_dim" not in top:
        raise OpenClipConfigError(f"{src}: model_cfg.embed_dim is required (the width of the joint embedding)")
    embed_dim, quick_gelu = int(top["embed_dim"]), bool(top.get("quick_gelu", False))
    width, head_width = int(vision.get("width", 768)), int(vision.get("head_width", 64))
    t_width, t_heads = int(text.get("width", 512)), int(text.get("heads", 8))
    if width % head_width or t_width % t_heads:
        raise OpenClipConfigError(f"{src}: a tower's width is not a whole number of heads (vision {width} / head_width "
                                  f"{head_width}, text {t_width} / heads {t_heads})")
    if oc.text_projection_is_identity() and t_width != embed_dim:
        raise OpenClipConfigError(f"{src}: model_cfg.text_cfg.proj_type = 'none' needs text width {t_width} == "
                                  f"embed_dim {embed_dim}")
    vocab_size = int(text.get("vocab_size", 49408))
    vision_config = {
        "hidden_size": width, "num_attention_heads": width // head_width,
        "intermediate_size": int(width * float(vision.get("mlp_ratio", 4.0))),  # open_clip's int(d_model * mlp_ratio)
        "num_hidden_layers": int(vision.get("layers", 12)),
        "image_size": _square(vision.get("image_size", 224), "model_cfg.vision_cfg.image_size", src),
        "patch_size": _square(vision.get("patch_size", 16), "model_cfg.vision_cfg.patch_size", src),
        "hidden_act": _activation(quick_gelu, vision.get("act_kwargs"), "model_cfg.vision_cfg.act_kwargs", src),
        "layer_norm_eps": _norm_eps(vision.get("norm_kwargs"), "model_cfg.vision_cfg.norm_kwargs", src),
        "projection_dim": embed_dim,
    }
    text_config = {
        "hidden_size": t_width, "num_attention_heads": t_heads,
        "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(text.get("layers", 12)),
        "max_position_embeddings": int(text.get("context_length", 77)), "vocab_size": vocab_size,
        "hidden_act": _activation(quick_gelu, text.get("act_kwargs"), "model_cfg.text_cfg.act_kwargs", src),
        "layer_norm_eps": _norm_eps(text.get("norm_kwargs"), "model_cfg.text_cfg.norm_kwargs", src),
        "projection_dim": embed_dim, **_text_special_ids(text, vocab_size, src),
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim)


@dataclass
class Preprocess:
    """What the exported image processor does: resize the short side and centre-crop to `image_size`, then
    normalise with `mean`/`std`; `notes` names preprocess_cfg settings the processor does not carry."""

    image_size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    notes: list[str] = field(default_factory=list)


def preprocess_settings(oc: OpenClipConfig, image_size: int) -> Preprocess:
    """The checkpoint's preprocess_cfg (mean, std, size) for the processor files, CLIP's where it has none."""
    cfg, src = oc.preprocess_cfg, oc.source
    size = _square(cfg.get("size", image_size), "preprocess_cfg.size", src)
    if size != image_size:
        raise OpenClipConfigError(f"{src}: preprocess_cfg.size = {size} differs from the model's image size "
                                  f"{image_size} (model_cfg.vision_cfg.image_size)")
    mean, std = tuple(float(x) for x in cfg.get("mean", CLIP_MEAN)), tuple(float(x) for x in cfg.get("std", CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise OpenClipConfigError(f"{src}: preprocess_cfg.mean/std: expected 3 values each, got {mean} and {std}")
    notes = [f"preprocess_cfg.{key} = {cfg[key]!r} is not carried: the processor resizes bicubic, short side first"
             for key, default in (("interpolation", "bicubic"), ("resize_mode", "shortest")) if cfg.get(key, default) != default]
    return Preprocess(size, mean, std, notes)
