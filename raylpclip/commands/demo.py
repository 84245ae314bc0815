"""`raylpclip demo`: the whole pipeline on a fresh 2-core machine with no data, in minutes.

Generates procedurally drawn image-caption shards (img2dataset layout), then PSD-pretrains a tiny
CLIP with 2 Ray Train workers, evaluates it zero-shot on a labelled held-out set and exports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from raylpclip.config import (DataConfig, EvalConfig, OptimConfig, PretrainConfig, TrainConfig, validate)
from raylpclip.data.shards import write_shards
from raylpclip.data.synthetic import SyntheticSpec, class_names, generate_samples, zeroshot_templates
from raylpclip.summary import write_summary


@dataclass
class SyntheticDataConfig:
    train_samples: int = 30000
    eval_samples: int = 1000
    samples_per_shard: int = 2500
    image_size: int = 64
    mismatch_fraction: float = 0.0  # captions swapped with another sample's: noisy correspondence
    label_by: str = "colour_shape"  # colour_shape | shape | colour
    seed: int = 0


def _demo_pretrain() -> PretrainConfig:
    return PretrainConfig(
        name="demo",
        output_dir="runs",
        data=DataConfig(image_size=64, context_length=24, decode_batch_size=250),
        optim=OptimConfig(lr=1e-3, warmup_steps=40, weight_decay=0.1),
        train=TrainConfig(steps=500, batch_size=128, checkpoint_every=100, eval_every=250, log_every=25,
                          num_workers=2),
        eval=EvalConfig(templates=zeroshot_templates()),
    )


@dataclass
class DemoConfig:
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    pretrain: PretrainConfig = field(default_factory=_demo_pretrain)


def split_dirs(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / "train", out_dir / "eval"


def write_synthetic(cfg: SyntheticDataConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write train and eval shards (skipped when they already exist: a re-run resumes, not regenerates)."""
    spec = SyntheticSpec(image_size=cfg.image_size, label_by=cfg.label_by)
    train_dir, eval_dir = split_dirs(out_dir)
    for split, n, seed, mismatch in ((train_dir, cfg.train_samples, cfg.seed, cfg.mismatch_fraction),
                                     (eval_dir, cfg.eval_samples, cfg.seed + 1_000_003, 0.0)):
        if any(split.glob("*_stats.json")):
            print(f"[raylpclip] reusing shards in {split}", flush=True)
            continue
        t0 = time.perf_counter()
        samples = generate_samples(n, spec=spec, seed=seed, mismatch_fraction=mismatch)
        paths = write_shards(samples, str(split), samples_per_shard=cfg.samples_per_shard)
        print(f"[raylpclip] wrote {n} samples in {len(paths)} shards to {split} "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    return train_dir, eval_dir


def run_demo(cfg: DemoConfig) -> dict:
    from raylpclip.runtime.train.pretrain_driver import run_pretrain  # Ray is imported only when it runs

    pre = cfg.pretrain
    data_dir = pre.run_dir / "data"
    train_dir, eval_dir = split_dirs(data_dir)
    pre.data.train, pre.data.eval = str(train_dir), str(eval_dir)
    pre.data.format = "webdataset"
    pre.data.image_size = cfg.synthetic.image_size
    spec = SyntheticSpec(image_size=cfg.synthetic.image_size, label_by=cfg.synthetic.label_by)
    pre.eval.classnames = class_names(spec)
    validate(pre)  # before generating data: a bad value fails in a second, not after the data is written
    write_synthetic(cfg.synthetic, data_dir)
    summary = run_pretrain(pre)
    summary["data_dir"] = str(data_dir.resolve())
    write_summary(pre.run_dir, summary)
    return summary
