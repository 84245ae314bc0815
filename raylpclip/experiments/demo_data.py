"""The demo's generated data: procedurally drawn image-caption shards (data/synthetic.py) in the
img2dataset layout, written once into a run's or an experiment's directory. `raylpclip demo`, and the
sweeps and scaling experiments that ask for it with a `synthetic:` section, use it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from raylpclip.config import PretrainConfig
from raylpclip.data.shard_writer import write_shards
from raylpclip.data.synthetic import SyntheticSpec, class_names, generate_samples


@dataclass
class SyntheticDataConfig:
    train_samples: int = 30000
    eval_samples: int = 1000
    samples_per_shard: int = 2500
    image_size: int = 64
    mismatch_fraction: float = 0.0  # captions swapped with another sample's: noisy correspondence
    label_by: str = "colour_shape"  # colour_shape | shape | colour
    seed: int = 0


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


def point_at(cfg: PretrainConfig, syn: SyntheticDataConfig, data_dir: Path) -> None:
    """Point a pretraining config at the generated data in `data_dir` (what write_synthetic writes there),
    its image size and, unless the config names them, the classes the eval set is labelled with."""
    train_dir, eval_dir = split_dirs(data_dir)
    cfg.data.train, cfg.data.eval, cfg.data.format = str(train_dir), str(eval_dir), "webdataset"
    cfg.data.image_size = syn.image_size
    if not cfg.eval.classnames:
        cfg.eval.classnames = class_names(SyntheticSpec(image_size=syn.image_size, label_by=syn.label_by))
