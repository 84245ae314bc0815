"""Running one cell of a study (experiments/study_plan.py): each kind through the command it reuses
(pretrain, probe, finetune, eval), plus the headroom measure; and whether a cell already finished with
the same config (a re-run skips it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylpclip import batch_schema
from raylpclip.batch_schema import FEATURE_PREFIX
from raylpclip.config import ConfigError, flatten, from_dict, save_config, to_dict
from raylpclip.data.views import CLEAN
from raylpclip.eval.headroom import cosine_summary, headroom
from raylpclip.eval.templates import OPENAI_IMAGENET_TEMPLATES
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.methods.carft import context_weights
from raylpclip.experiments.study_plan import Cell, HeadroomSpec
from raylpclip.models.classifier import context_length, image_size, load_encoder
from raylpclip.summary import write_summary

CELL_CONFIG = "cell.yaml"  # the cell's config as planned: a finished cell is reused only with the same one


def finished(cell: Cell) -> dict | None:
    """The cell's summary.json when it finished with this same config; a run left by a different config
    is an error (mixing two designs in one table would be worse)."""
    run_dir = Path(cell.config.run_dir)
    summary, saved = run_dir / "summary.json", run_dir / CELL_CONFIG
    if not summary.is_file() or not saved.is_file():
        return None
    from omegaconf import OmegaConf

    before = flatten({k: v for k, v in OmegaConf.to_container(OmegaConf.load(saved)).items() if k != "ray"})
    now = flatten({k: v for k, v in to_dict(cell.config).items() if k != "ray"})
    differ = sorted(k for k in set(before) & set(now) if before[k] != now[k])
    if differ:
        raise ConfigError(f"study cell {cell.id}: {run_dir} finished with another config ({', '.join(differ[:5])}); "
                          "delete that directory or use another study name")
    return json.loads(summary.read_text())


def run_cell(cell: Cell) -> dict:
    """Run `cell` and return its summary (written to its run directory with the cell's config)."""
    run_dir = Path(cell.config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cell.kind == "pretrain":
        from raylpclip.runtime.train.pretrain_driver import run_pretrain

        summary = run_pretrain(cell.config)
    elif cell.kind == "probe":
        from raylpclip.runtime.train.probe_driver import run_probe

        summary = run_probe(cell.config)
    elif cell.kind == "finetune":
        from raylpclip.runtime.train.finetune_driver import run_finetune

        summary = run_finetune(cell.config)
    elif cell.kind == "eval":
        from raylpclip.commands.evaluate import resolve_classifiers
        from raylpclip.runtime.data.robustness_eval import run_robustness_eval

        classifiers, tokenizers = resolve_classifiers(cell.config)
        summary = run_robustness_eval(cell.config, classifiers, tokenizers=tokenizers)
    elif cell.kind == "headroom":
        summary = measure_headroom(cell.config)
    else:
        raise ValueError(f"unknown study cell kind {cell.kind!r}")
    save_config(cell.config, run_dir / CELL_CONFIG)  # last: a cell cut short is not taken for finished
    return summary


def _clean_features(model: str, shards: str, *, limit: int, image_size_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), labels (N,)) of the clean view of up to `limit` images (0: all) of `shards`."""
    from raylpclip.config import DataConfig, InferenceConfig
    from raylpclip.runtime.data.batch_inference import encode, view_dataset

    data = DataConfig(image_size=image_size_px, format="webdataset")
    ds = encode(view_dataset(shards, data, views=[CLEAN], limit=limit), encoder=model, cfg=InferenceConfig())
    feats, labels = [], []
    for batch in ds.iter_batches(batch_size=2048, batch_format="numpy"):
        feats.append(batch[FEATURE_PREFIX + CLEAN])
        labels.append(batch[batch_schema.LABEL])
    return torch.from_numpy(np.concatenate(feats)), torch.from_numpy(np.concatenate(labels)).long()


def measure_headroom(spec: HeadroomSpec) -> dict[str, Any]:
    """The headroom of one pretrained model (eval/headroom.py) and its context cosines."""
    from raylpclip.data.metadata import label_names
    from raylpclip.data.shard_files import resolve_shards

    start = time.perf_counter()
    tower, tokenizer = load_encoder(spec.model)
    size = image_size(spec.model)
    files, fmt = resolve_shards(spec.pairs["clean"][1])
    classnames = label_names(files, fmt=fmt)
    length = context_length(tower)
    weights = zeroshot_classifier(tower, tokenizer, classnames, spec.templates, context_length=length)
    out: dict[str, Any] = {}
    for measure, (train, test) in spec.pairs.items():
        train_x, train_y = _clean_features(spec.model, train, limit=spec.train_samples, image_size_px=size)
        test_x, test_y = _clean_features(spec.model, test, limit=0, image_size_px=size)
        out.update({f"{measure}_{k}": v for k, v in headroom(train_x, train_y, test_x, test_y, weights).items()})
    # Context embeddings as CAR-FT builds them (a template per context, averaged over the classes): the
    # world's own contexts, and the 80 OpenAI templates CAR-FT uses by default.
    if spec.contexts:
        out["context_cosine"] = cosine_summary(context_weights(tower, tokenizer, classnames, spec.contexts,
                                                               context_length=length))
    out["openai_templates_cosine"] = cosine_summary(context_weights(tower, tokenizer, classnames,
                                                                    OPENAI_IMAGENET_TEMPLATES, context_length=length))
    out.update(model=spec.model, wall_s=time.perf_counter() - start, run_dir=str(spec.run_dir))
    print(f"[raylpclip] headroom {spec.name}: " + "; ".join(
        f"{m}: zero-shot {out[f'{m}_zeroshot_acc1']:.3f}, supervised probe {out[f'{m}_supervised_probe_acc1']:.3f} "
        f"(margin {out[f'{m}_margin']:+.3f})" for m in spec.pairs), flush=True)
    write_summary(spec.run_dir, out)
    return out


def load_cell_config(cell: Cell) -> Any:
    """The config a finished cell saved (what its numbers were made with)."""
    from omegaconf import OmegaConf

    return from_dict(type(cell.config), OmegaConf.to_container(OmegaConf.load(Path(cell.config.run_dir) / CELL_CONFIG)))
