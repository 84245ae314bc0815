"""`raylpclip demo`: the whole pipeline on a fresh 2-core machine with no data, in minutes.

Generates procedurally drawn image-caption shards (img2dataset layout), then PSD-pretrains a tiny
CLIP with 2 Ray Train workers, evaluates it zero-shot on a labelled held-out set and exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raylpclip.commands.pretrain import print_result
from raylpclip.config import (DataConfig, EvalConfig, OptimConfig, PretrainConfig, TrainConfig, config_args,
                              load_config, validate)
from raylpclip.data.synthetic import zeroshot_templates
from raylpclip.experiments.demo_data import SyntheticDataConfig, point_at, write_synthetic
from raylpclip.summary import write_summary


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


def run_demo(cfg: DemoConfig) -> dict:
    from raylpclip.runtime.train.pretrain_driver import run_pretrain  # Ray is imported only when it runs

    pre = cfg.pretrain
    data_dir = pre.run_dir / "data"
    point_at(pre, cfg.synthetic, data_dir)
    validate(pre)  # before generating data: a bad value fails in a second, not after the data is written
    write_synthetic(cfg.synthetic, data_dir)
    summary = run_pretrain(pre)
    summary["data_dir"] = str(data_dir.resolve())
    write_summary(pre.run_dir, summary)
    return summary


def cmd_demo(args: list[str]) -> Path:
    summary = run_demo(load_config(DemoConfig, *config_args(args)))
    print_result(summary)
    return Path(summary["run_dir"]) / "summary.json"
