"""CLIP from transformers: named presets, a local pretrained loader, export, and a feature tower.

`ClipTower` is what the tasks and losses see: it returns the named features of the dict contract
(`image_features`, `text_features`, `logit_scale`). It calls the vision/text submodules and their
projections directly, because `CLIPModel.get_*_features` changed its return type between
transformers 4 (a tensor) and 5 (a ModelOutput).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from raylpclip.models.hf_processor import save_processor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# CLIP's rule: the learnable temperature t gives s = exp(t), clamped so that s <= 100.
MAX_LOGIT_SCALE = 100.0

# Each preset: CLIPConfig kwargs, with the vision and text towers as nested dicts.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU demos: 64 px images in 8 px patches (65 tokens), 32-token captions.
    "tiny": {
        "vision": {
            "image_size": 64, "patch_size": 8, "hidden_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "intermediate_size": 512,
        },
        "text": {
            "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 512, "max_position_embeddings": 32,
        },
        "projection_dim": 128,
    },
    # OpenAI ViT-B/32 shapes.
    "vit-b-32": {
        "vision": {
            "image_size": 224, "patch_size": 32, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072,
        },
        "text": {
            "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
            "intermediate_size": 2048, "max_position_embeddings": 77, "vocab_size": 49408,
        },
        "projection_dim": 512,
    },
    # OpenAI ViT-B/16 shapes: B/32's towers with 16 px patches (197 image tokens instead of 50).
    "vit-b-16": {
        "vision": {
            "image_size": 224, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072,
        },
        "text": {
            "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
            "intermediate_size": 2048, "max_position_embeddings": 77, "vocab_size": 49408,
        },
        "projection_dim": 512,
    },
}

_TOWER_CONFIGS = {"vision": CLIPVisionConfig, "text": CLIPTextConfig}


def _config_keys(config_cls: type) -> set[str]:
    """Attribute names a config class accepts (its defaults' serialised keys)."""
    return set(config_cls().to_dict())


def _apply_overrides(spec: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Write overrides (`"vision.image_size"`, `"projection_dim"`, flat or nested: a YAML mapping and the command
    line's `model.overrides.vision.image_size=32` arrive nested) into `spec` in place."""
    if not overrides:
        return
    # Imported here, not at the top: raylpclip.config loads omegaconf, and the GPU check
    # (bench/gpu_check.py) builds presets, without overrides, on machines that lack it.
    from raylpclip.config import flatten

    top_keys = _config_keys(CLIPConfig) - {"vision_config", "text_config"}
    for key, value in flatten(overrides).items():
        tower, _, name = key.rpartition(".")
        if tower in _TOWER_CONFIGS and name in _config_keys(_TOWER_CONFIGS[tower]):
            spec[tower][name] = value
        elif not tower and name in top_keys:
            spec[name] = value
        else:
            raise ValueError(
                f"unknown model override key {key!r}: use 'vision.<field>', 'text.<field>' or a "
                f"top-level CLIPConfig field such as 'projection_dim'"
            )


def build_clip(
    preset: str,
    *,
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    overrides: dict[str, Any] | None = None,
) -> CLIPModel:
    """A randomly initialised CLIPModel with the shapes of `preset` and the tokenizer's special ids.

    The text tower pools the hidden state at the first `eos_token_id` in each row. transformers keeps
    a legacy branch for `eos_token_id == 2` that pools at the argmax of input_ids instead (right only
    for OpenAI's vocab, where EOS is the largest id), so an EOS id of 2 is refused here.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; allowed presets: {sorted(PRESETS)}")
    if eos_token_id == 2:
        raise ValueError(
            "eos_token_id == 2 makes transformers' CLIP text tower pool at argmax(input_ids) (a legacy "
            "branch); give the tokenizer's EOS token another id"
        )
    spec = copy.deepcopy(PRESETS[preset])
    spec["text"].update(
        vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    _apply_overrides(spec, overrides or {})
    config = CLIPConfig(
        text_config=spec.pop("text"), vision_config=spec.pop("vision"), **spec
    )
    return clip_from_config(config)


def clip_from_config(config: CLIPConfig) -> CLIPModel:
    """A randomly initialised CLIPModel of `config`, with the attention `load_clip` gives a saved one."""
    return _with_sdpa(lambda **kw: CLIPModel._from_config(config, **kw))


def load_clip(path: str) -> CLIPModel:
    """A CLIPModel from a local directory written by `save_pretrained` (never the network)."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no CLIP model directory with a config.json at {path!r}")
    return _with_sdpa(lambda **kw: CLIPModel.from_pretrained(path, local_files_only=True, **kw))


def _with_sdpa(make):
    """Build with PyTorch's fused attention where this transformers version supports the flag."""
    try:
        return make(attn_implementation="sdpa")
    except (TypeError, ValueError, ImportError):
        return make()


def export_clip(model: CLIPModel, out_dir: str, *, tokenizer=None, logit_bias: float | None = None) -> None:
    """Save `model` (safetensors) into `out_dir`, loadable by `load_clip`; with its tokenizer, also the
    processor files (models/hf_processor.py), so that CLIPProcessor, AutoProcessor and transformers'
    zero-shot-image-classification pipeline load the directory too. `logit_bias` (a SigLIP tower's b) goes
    into config.json as `logit_bias`: CLIPModel has no weight for it, its config keeps extra keys, and
    `load_clip(...).config.logit_bias` (or the JSON) gives it back; CLIP's own similarities ignore it."""
    os.makedirs(out_dir, exist_ok=True)
    if logit_bias is not None:
        model.config.logit_bias = float(logit_bias)
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        save_processor(model.config, tokenizer, out_dir)


def normalize_images(
    images_uint8: torch.Tensor,
    *,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float32 (B, 3, H, W), (x / 255 - mean) / std per channel.

    Images travel through the data pipeline as uint8 (4x smaller than float) and are normalised here,
    on the device next to the model.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize_images expects uint8 images, got {images_uint8.dtype}")
    x = images_uint8.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


class ClipTower(torch.nn.Module):
    """A CLIPModel (`.clip`) seen as the dict contract of the tasks and losses.

    `logit_bias`: SigLIP's learnable logit bias b (loss.kind=siglip), a parameter of the tower rather than
    of the loss so that DDP averages its gradient, the optimizer trains it and checkpoints hold it (state
    key "logit_bias"); HF's CLIPModel has no such weight, so exports keep it in config.json (`export_clip`).
    None (CLIP): no parameter, and the state_dict is the CLIPModel's alone."""

    def __init__(self, clip: CLIPModel, *, logit_bias: float | None = None):
        super().__init__()
        self.clip = clip
        self.channels_last = False
        if logit_bias is None:
            self.register_parameter("logit_bias", None)
        else:
            self.logit_bias = torch.nn.Parameter(torch.tensor(float(logit_bias)))

    def enable_grad_checkpointing(self) -> None:
        """Recompute each encoder layer's activations in backward instead of keeping them: activation
        memory drops from O(layers) to O(1) layer, for about one more forward per step. Non-reentrant
        checkpointing (works under DDP and autocast). Takes effect in train mode only (HF's rule)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.clip, "activation_checkpointing_enable"):  # transformers >= 5.x name
            self.clip.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def use_channels_last(self) -> None:
        """Channels-last weights for the conv patch embedding and channels-last images into it (the
        layout cuDNN's fast conv kernels want). The rest of a ViT works on (B, tokens, width) and is unaffected."""
        self.clip.vision_model.embeddings.patch_embedding.to(memory_format=torch.channels_last)
        self.channels_last = True

    def compile_towers(self, **kwargs) -> None:
        """torch.compile the vision and text towers in place (`nn.Module.compile`): state_dict keys stay
        unchanged, so checkpoints and exports do not care whether a run compiled."""
        self.clip.vision_model.compile(**kwargs)
        self.clip.text_model.compile(**kwargs)

    def encode_image(self, image: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """float (B, 3, H, W), already normalised -> (B, D) projected features (unit norm by default)."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        pooled = self.clip.vision_model(pixel_values=image).pooler_output
        features = self.clip.visual_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, normalize: bool = True
    ) -> torch.Tensor:
        """int (B, L) ids and mask -> (B, D) features pooled at each row's first EOS (unit norm by default)."""
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        features = self.clip.text_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def logit_scale(self) -> torch.Tensor:
        """Scalar s = exp(t) clamped to <= 100; gradients still reach t below the clamp."""
        return self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """image (B, 3, H, W) float, input_ids/attention_mask (B, L) ->
        {"image_features": (B, D) unit norm, "text_features": (B, D) unit norm, "logit_scale": ()}, and
        "logit_bias": () when the tower has one (SigLIP)."""
        out = {
            "image_features": self.encode_image(image),
            "text_features": self.encode_text(input_ids, attention_mask),
            "logit_scale": self.logit_scale(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out
