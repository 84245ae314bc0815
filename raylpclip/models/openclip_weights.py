"""open_clip checkpoints as transformers CLIPModels: read the file, rename its weights, load them.

The weights map one to one, except three reshapes:
- attention: open_clip keeps q, k and v stacked in one `in_proj_weight` (3W, W) / `in_proj_bias` (3W,), in
  that order (nn.MultiheadAttention's layout); HF has separate `q_proj`, `k_proj`, `v_proj`;
- projections: open_clip's `visual.proj` and `text_projection` are (width, embed_dim) matrices applied as
  `x @ proj`; HF's are nn.Linear weights (embed_dim, width), hence the transpose;
- `logit_scale` may be stored with shape (1,) (open_clip's nonscalar_logit_scale); HF's is a scalar.
The causal text mask is a buffer open_clip does not save (HF builds its own), and open_clip's attention
scales by head_dim ** -0.5 as HF does. Every checkpoint key must land somewhere and every HF weight must
be filled: a leftover key is a feature HF CLIP lacks (layer scale, attention pooling...), not noise.
"""

from __future__ import annotations

import os
import pickle
from typing import Iterator

import torch
from safetensors.torch import load_file
from transformers import CLIPModel

from raylpclip.models.clip import clip_from_config
from raylpclip.models.openclip_config import OpenClipConfig, hf_clip_config, read_openclip_config

# Entries of OpenAI's original (JIT-era) state dicts that are not weights.
_NOT_WEIGHTS = {"attn_mask", "input_resolution", "context_length", "vocab_size"}
_BLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                "attn.out_proj": "self_attn.out_proj"}
_LAYERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
           "transformer.resblocks.": "text_model.encoder.layers."}
_PLAIN = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    **{f"{oc}.{p}": f"{hf}.{p}" for oc, hf in (("visual.ln_pre", "vision_model.pre_layrnorm"),
                                               ("visual.ln_post", "vision_model.post_layernorm"),
                                               ("ln_final", "text_model.final_layer_norm")) for p in ("weight", "bias")},
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}


def read_openclip_state(path: str) -> dict[str, torch.Tensor]:
    """The weights in an open_clip checkpoint: `.safetensors`, a torch pickle of tensors (read with
    weights_only=True, so no code in the file ever runs), or a training checkpoint {"state_dict": ...}
    whose keys carry DistributedDataParallel's `module.` prefix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no open_clip checkpoint file at {path!r}")
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as exc:
            raise ValueError(f"{path}: not a checkpoint torch.load(weights_only=True) can read (a TorchScript "
                             f"archive or a pickle with code is never executed): {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (or a training checkpoint with one under "
                         "'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _block(hf_prefix: str, rest: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rpartition("_")[2]
        return [(f"{hf_prefix}self_attn.{name}_proj.{kind}", part.contiguous())
                for name, part in zip("qkv", value.chunk(3, dim=0))]
    module, _, param = rest.rpartition(".")
    return [(f"{hf_prefix}{_BLOCK_PARTS[module]}.{param}", value)] if module in _BLOCK_PARTS else []


def _renamed(key: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The HF weights one open_clip entry becomes ([] for an entry HF CLIP has no place for)."""
    if key.startswith("text."):  # CustomTextCLIP keeps its text tower under `text.`
        key = key[len("text."):]
    if key in _PLAIN:
        return [(_PLAIN[key], value)]
    if key in _TRANSPOSED:
        return [(_TRANSPOSED[key], value.t().contiguous())]
    if key == "logit_scale":
        return [("logit_scale", value.reshape(()))]
    for prefix, hf_prefix in _LAYERS.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            return _block(f"{hf_prefix}{index}.", rest, value) if index.isdigit() else []
    return []


def hf_clip_state(state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """open_clip weights renamed (and split/transposed) into CLIPModel's state dict."""
    out, leftover = {}, []
    for key, value in state.items():
        renamed = _renamed(key, value)
        if not renamed and key not in _NOT_WEIGHTS:
            leftover.append(key)
        out.update(renamed)
    if leftover:
        raise ValueError(f"{source}: weights transformers' CLIPModel has no place for: {_few(leftover)} (e.g. "
                         "layer scale, attention pooling, a logit bias: open_clip features HF CLIP cannot express)")
    return out


def _few(keys: list[str], n: int = 6) -> str:
    return ", ".join(sorted(keys)[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _shape_errors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> Iterator[str]:
    for key, value in state.items():
        if key in expected and value.shape != expected[key].shape:
            yield f"{key} {tuple(value.shape)} (the config makes {tuple(expected[key].shape)})"


def load_openclip(checkpoint: str, *, config: str | None = None) -> tuple[CLIPModel, OpenClipConfig]:
    """(CLIPModel in eval mode, the open_clip config it was built from) for an open_clip checkpoint file;
    `config` as in `read_openclip_config`. The model's weights are float32 whatever the file stored."""
    oc = read_openclip_config(checkpoint, config)
    config = hf_clip_config(oc)  # a config HF CLIP cannot express fails before any weight is read
    raw = read_openclip_state(checkpoint)
    bias = raw.pop("logit_bias", None)  # SigLIP's b: a config value of the CLIP directory, not a CLIPModel weight
    if (bias is None) != (oc.model_cfg.get("init_logit_bias") is None):
        raise ValueError(f"{checkpoint}: its model config {oc.source} "
                         + ("makes a logit bias (init_logit_bias) that the checkpoint lacks" if bias is None else
                            "has no init_logit_bias, yet the checkpoint holds a logit_bias"))
    state = hf_clip_state(raw, source=checkpoint)
    model = clip_from_config(config)
    if bias is not None:
        model.config.logit_bias = float(bias.reshape(()))
    expected = model.state_dict()
    if oc.text_projection_is_identity() and "text_projection.weight" not in state:
        state["text_projection.weight"] = torch.eye(expected["text_projection.weight"].shape[0])
    missing, unknown = set(expected) - set(state), set(state) - set(expected)
    bad_shapes = list(_shape_errors(state, expected))
    if missing or unknown or bad_shapes:
        problems = [f"lacks {_few(list(missing))}" if missing else "",
                    f"has more than the config makes: {_few(list(unknown))}" if unknown else "",
                    f"has other shapes: {_few(bad_shapes, 3)}" if bad_shapes else ""]
        raise ValueError(f"{checkpoint} does not fit its model config {oc.source}: it "
                         + "; ".join(p for p in problems if p))
    model.load_state_dict(state, strict=True)
    return model.eval(), oc
