"""Image classifiers on CLIP: an encoder plus a linear head, stored as a directory any command writes
(`probe`, `finetune`) and any command reads (`eval`).

A classifier directory holds `classifier.json` (kind, class names, where the encoder is) and
`head.safetensors` (the head's `weight` (C, D) and `bias` (C,)). The encoder is either in the same
directory (a fine-tuned CLIP saved with save_pretrained) or referenced by path (a probe on a frozen
encoder, which is never copied). Heads act on unit-norm image features, like the zero-shot classifier
they can start from (see LinearProbe).

Encoders load from three kinds of local path: a `save_pretrained` CLIP directory, a raylpclip run
directory (its exported `model/`), or one of a run's checkpoint directories (rebuilt from the run's
saved config and tokenizer). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.models.bpe_tokenizer import load_tokenizer
from raylpclip.models.clip import ClipTower, export_clip, load_clip
from raylpclip.models.head import LinearProbe

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
SAME_DIR = "."


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def load_encoder(path: str | Path) -> tuple[ClipTower, object]:
    """(tower in eval mode, tokenizer) from a CLIP directory, a run directory or a checkpoint directory."""
    path = Path(path)
    if _is_model_dir(path):
        return ClipTower(load_clip(str(path))).eval(), load_tokenizer(str(path))
    if _is_model_dir(path / "model"):
        return load_encoder(path / "model")
    if (path / "state.pt").is_file():
        return _from_checkpoint(path)
    raise FileNotFoundError(f"no CLIP model at {str(path)!r}: expected a save_pretrained directory (config.json), "
                            f"a raylpclip run directory (model/config.json) or a checkpoint directory (state.pt)")


def _from_checkpoint(ckpt: Path) -> tuple[ClipTower, object]:
    """A pretraining checkpoint, rebuilt with the config and tokenizer its run saved beside it, and with the
    weights the run exports (export.weights: raw or EMA), as its run directory's model/ holds them."""
    from raylpclip.config import PretrainConfig, load_config
    from raylpclip.engine.checkpoint_state import load_state
    from raylpclip.engine.model_export import exported_weights
    from raylpclip.models.tower_factory import build_tower

    run_dir = ckpt.parent
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} has no config.yaml in its run directory {run_dir}")
    cfg = load_config(PretrainConfig, str(run_dir / "config.yaml"))
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.pretrained or str(run_dir / "tokenizer"))
    tower = build_tower(cfg.model, tokenizer=tokenizer, loss=cfg.loss)
    tower.load_state_dict(exported_weights(load_state(ckpt)["task"], weights=cfg.export.weights))
    return tower.eval(), tokenizer


def context_length(tower: ClipTower) -> int:
    """The longest prompt the text tower takes (its position embeddings)."""
    return int(tower.clip.config.text_config.max_position_embeddings)


def image_size(encoder: str | Path) -> int:
    """The input size an encoder was built for (its vision position embeddings fix it)."""
    for candidate in (Path(encoder), Path(encoder) / "model"):
        if _is_model_dir(candidate):
            return int(json.loads((candidate / "config.json").read_text())["vision_config"]["image_size"])
    tower, _ = load_encoder(encoder)
    return int(tower.clip.config.vision_config.image_size)


def zeroshot_head(tower: ClipTower, tokenizer, classnames: Sequence[str], templates: Sequence[str], *,
                  logit_scale: float | None = None) -> LinearProbe:
    """The zero-shot classifier as a head: weight s * W, bias 0 (s defaults to the model's own logit scale)."""
    weights = zeroshot_classifier(tower, tokenizer, classnames, templates, context_length=context_length(tower))
    scale = float(tower.logit_scale().detach()) if logit_scale is None else logit_scale
    return LinearProbe.from_zeroshot(weights, logit_scale=scale)


@dataclass
class Classifier:
    encoder: str  # absolute path of the encoder (anything load_encoder takes)
    head: LinearProbe
    classnames: list[str]
    kind: str  # zeroshot | lpclip | supervised | ft | carft | wise-ft ...
    info: dict = field(default_factory=dict)  # how it was made (round, lambda, alpha, ...)


def save_classifier(out_dir: str | Path, *, head: LinearProbe, classnames: Sequence[str], kind: str,
                    encoder: str | Path | None = None, model: ClipTower | None = None, tokenizer=None,
                    info: dict | None = None) -> Path:
    """Write a classifier directory: `model` (and its tokenizer) saved inside it, or `encoder` referenced."""
    if (encoder is None) == (model is None):
        raise ValueError("save_classifier needs exactly one of encoder= (a path) or model= (saved inside)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        export_clip(model.clip, str(out), tokenizer=tokenizer)
    save_file({"weight": head.weight.detach().float().cpu().contiguous(),
               "bias": head.bias.detach().float().cpu().contiguous()}, str(out / HEAD_FILE))
    meta = {"kind": kind, "classnames": list(classnames), "info": info or {},
            "encoder": SAME_DIR if model is not None else str(Path(encoder).resolve())}
    (out / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2))
    return out


def load_head(path: str | Path) -> LinearProbe:
    tensors = load_file(str(Path(path) / HEAD_FILE))
    weight, bias = tensors["weight"], tensors["bias"]
    head = LinearProbe(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.eval()


def is_classifier(path: str | Path) -> bool:
    return (Path(path) / CLASSIFIER_FILE).is_file()


def load_classifier(path: str | Path) -> Classifier:
    path = Path(path)
    if not is_classifier(path):
        raise FileNotFoundError(f"{path} is not a classifier directory (no {CLASSIFIER_FILE})")
    meta = json.loads((path / CLASSIFIER_FILE).read_text())
    missing = {"kind", "classnames", "encoder"} - set(meta)
    if missing:
        raise ValueError(f"{path / CLASSIFIER_FILE}: missing keys {sorted(missing)}")
    encoder = str(path.resolve()) if meta["encoder"] == SAME_DIR else meta["encoder"]
    head = load_head(path)
    if head.weight.shape[0] != len(meta["classnames"]):
        raise ValueError(f"{path}: head has {head.weight.shape[0]} classes but classifier.json names "
                         f"{len(meta['classnames'])}")
    return Classifier(encoder=encoder, head=head, classnames=list(meta["classnames"]), kind=meta["kind"],
                      info=meta.get("info", {}))
