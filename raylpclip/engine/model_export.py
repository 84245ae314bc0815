"""A pretraining checkpoint's model as a Hugging Face CLIP directory, with the weights `export.weights`
names: the raw training weights or their EMA (`train.ema_decay`).

Pure torch: the driver (runtime/train/pretrain_driver.py) exports the run's final checkpoint with it,
tests a checkpoint they wrote.
"""

from __future__ import annotations

from pathlib import Path

import torch

from raylpclip.config import PretrainConfig
from raylpclip.engine.checkpoint_state import CheckpointError, load_state
from raylpclip.engine.pretrain_task import EMA_WEIGHTS
from raylpclip.models.clip import export_clip
from raylpclip.models.tower_factory import build_tower


def exported_weights(task_state: dict, *, weights: str) -> dict[str, torch.Tensor]:
    """The ClipTower state_dict that `weights` names in a PretrainTask's state: "raw", the model's, or
    "ema", the EMA weights."""
    if weights == "raw":
        return task_state["model"]
    if weights == "ema":
        if EMA_WEIGHTS not in task_state:
            raise CheckpointError("export.weights=ema: the checkpoint holds no EMA weights (it was written with "
                                  "train.ema_decay 0); export.weights=raw exports its raw weights")
        return task_state[EMA_WEIGHTS]
    raise ValueError(f"config key 'export.weights': got {weights!r}, expected one of ['raw', 'ema']")


def export_checkpoint_model(cfg: PretrainConfig, directory: str | Path, *, tokenizer, out_dir: str | Path) -> Path:
    """Save the model of the checkpoint in `directory`, with the weights of `cfg.export.weights`, as
    save_pretrained does, its tokenizer and image processor beside it (models/clip.export_clip), so that
    CLIPModel, CLIPProcessor, AutoModel/AutoProcessor and the zero-shot-image-classification pipeline all
    load `out_dir`."""
    state = load_state(directory)
    tower = build_tower(cfg.model, tokenizer=tokenizer, loss=cfg.loss)
    tower.load_state_dict(exported_weights(state["task"], weights=cfg.export.weights))
    # SigLIP's bias has no CLIPModel weight: export_clip writes it into config.json (`logit_bias`).
    bias = None if tower.logit_bias is None else float(tower.logit_bias.detach())
    export_clip(tower.clip, str(out_dir), tokenizer=tokenizer, logit_bias=bias)
    return Path(out_dir)
