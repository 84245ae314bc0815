"""The processor files of an exported CLIP: the image processor and the tokenizer that make the export
directory loadable by `CLIPProcessor`, `AutoProcessor` and `pipeline("zero-shot-image-classification")`.

The image processor repeats raylpclip's eval preprocessing (`data/transforms.py`: bicubic resize of the
short side to the model's image size, centre crop, /255, CLIP's mean/std). With transformers 5's PIL
backend (its choice without torchvision; `AutoImageProcessor.from_pretrained(dir, backend="pil")`) and
transformers 4's default processor, the pixels match `clip_preprocess` to float rounding, except when a
resized side exceeds the crop by an odd number of pixels: transformers crops at floor(excess / 2),
raylpclip (as torchvision) at round(excess / 2), one pixel further when floor(excess / 2) is odd. The
torchvision backend resizes with torch's bicubic, a little off PIL's.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Sequence

from transformers import CLIPConfig

from raylpclip.data.transforms import CLIP_MEAN, CLIP_STD

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"  # the name transformers' image processors load
# PIL's BICUBIC, the filter `eval_transform` resizes with (transformers stores the PIL enum's value).
_PIL_BICUBIC = 3
# transformers 5 saves a plain fast tokenizer as "TokenizersBackend", a class transformers 4 lacks;
# both versions load "PreTrainedTokenizerFast" as that same plain tokenizer.
_PORTABLE_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# A CLIPTextConfig with eos_token_id == 2 is a legacy config (OpenAI's own): the text tower pools at
# argmax(input_ids) and its bos/eos/pad ids do not name the tokenizer's tokens.
_LEGACY_EOS_ID = 2


def image_processor_config(image_size: int, *, mean: Sequence[float] = CLIP_MEAN,
                           std: Sequence[float] = CLIP_STD) -> dict:
    """preprocessor_config.json of a CLIPImageProcessor doing `eval_transform` + `clip_preprocess` at
    `image_size` (another `mean`/`std`: a converted model's own, e.g. an open_clip checkpoint's). Written as
    JSON rather than through the class: transformers 5 without torchvision prints a fallback warning on
    every reach for `CLIPImageProcessor`, and the file is the same."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": _PIL_BICUBIC,
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [float(m) for m in mean], "image_std": [float(s) for s in std], "do_convert_rgb": True,
    }


def export_tokenizer(tokenizer, config: CLIPConfig):
    """A copy of `tokenizer` with the model's text limits: `model_max_length` = the text tower's
    positions (so `truncation=True` cuts prompts to what the tower takes), and the special tokens the
    tower was built with, filled in where the tokenizer lacks one (a missing pad token is the one
    `build_tower` replaced by EOS). A tokenizer whose bos/eos/pad ids disagree with the model's fails:
    the tower pools at its config's EOS id, so such an export would classify from the wrong token."""
    text = config.text_config
    exported = copy.deepcopy(tokenizer)  # the run keeps using its own tokenizer unchanged
    exported.model_max_length = int(text.max_position_embeddings)
    if text.eos_token_id == _LEGACY_EOS_ID:
        return exported
    for name in ("bos", "eos", "pad"):
        model_id = getattr(text, f"{name}_token_id")
        if model_id is None or not 0 <= model_id < len(exported):
            continue
        own_id = getattr(exported, f"{name}_token_id")
        if own_id is None:
            setattr(exported, f"{name}_token", exported.convert_ids_to_tokens(model_id))
        elif own_id != model_id:
            raise ValueError(f"the tokenizer's {name} token id {own_id} differs from the model's "
                             f"text_config.{name}_token_id {model_id}: export the model with its own tokenizer")
    return exported


def save_processor(config: CLIPConfig, tokenizer, out_dir: str, *, mean: Sequence[float] = CLIP_MEAN,
                   std: Sequence[float] = CLIP_STD) -> None:
    """Write the tokenizer (`export_tokenizer`; none when `tokenizer` is None) and `preprocessor_config.json`
    (normalising with `mean`/`std`) into `out_dir`.

    The tokenizer keeps its own class: a raylpclip BPE is a plain fast tokenizer (its normaliser and
    byte-level pre-tokeniser live in tokenizer.json), and naming it CLIPTokenizer would make
    transformers 5 rebuild OpenAI's pipeline over its vocabulary and encode other ids. CLIPProcessor
    (transformers 4.57 and 5) takes any tokenizer; OpenAI's BPE rebuilt offline is a CLIPTokenizer already.
    """
    if tokenizer is not None:
        export_tokenizer(tokenizer, config).save_pretrained(out_dir)
        _portable_tokenizer_config(out_dir)
    _write_json(os.path.join(out_dir, IMAGE_PROCESSOR_FILE),
                image_processor_config(int(config.vision_config.image_size), mean=mean, std=std))


def _portable_tokenizer_config(out_dir: str) -> None:
    """Make tokenizer_config.json read the same under transformers 4 and 5 (both are supported)."""
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("tokenizer_class") in _PORTABLE_TOKENIZER_CLASS:
        meta["tokenizer_class"] = _PORTABLE_TOKENIZER_CLASS[meta["tokenizer_class"]]
    # How transformers 5 was asked to load the source tokenizer, not a property of the tokenizer.
    for key in ("is_local", "local_files_only"):
        meta.pop(key, None)
    # transformers 4's plain fast tokenizer also returns token_type_ids, which CLIPModel.forward refuses
    # (the zero-shot pipeline passes the tokenizer's whole output to the model).
    meta["model_input_names"] = ["input_ids", "attention_mask"]
    # transformers 4's plain fast tokenizer sets the byte-level pre-tokeniser's add_prefix_space from
    # this file (False when absent), overriding tokenizer.json: a BPE trained with the prefix space would
    # encode a prompt's first word with other ids than training did.
    backend = os.path.join(out_dir, "tokenizer.json")  # absent for a slow (Python) tokenizer
    pre_tokenizer = {}
    if os.path.isfile(backend):
        with open(backend, encoding="utf-8") as f:
            pre_tokenizer = json.load(f).get("pre_tokenizer") or {}
    if "add_prefix_space" in pre_tokenizer:
        meta.setdefault("add_prefix_space", pre_tokenizer["add_prefix_space"])
    _write_json(path, meta)


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
