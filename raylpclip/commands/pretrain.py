"""`raylpclip pretrain CONFIG.yaml [key=value ...]`: PSD (or CLIP, psd.a_max=0) pretraining on Ray Train.

The run config is config/sections.PretrainConfig (every experiment and benchmark builds on it); the run
itself is runtime/train/pretrain_driver.py, imported once the config has passed its checks.
"""

from __future__ import annotations

from pathlib import Path

from raylpclip.config import ConfigError, PretrainConfig, config_args, load_config


def cmd_pretrain(args: list[str]) -> Path:
    cfg = load_config(PretrainConfig, *config_args(args))
    if not cfg.data.train_sources():
        raise ConfigError("config key 'data.train': required (a shard directory, glob, brace range or s3:// URL), "
                          "or data.sources")
    from raylpclip.runtime.train.pretrain_driver import run_pretrain

    summary = run_pretrain(cfg)
    print_result(summary)
    return Path(summary["run_dir"]) / "summary.json"


def print_result(summary: dict) -> None:
    if summary.get("acc1") is not None:
        chance = summary.get("chance_acc1") or 0
        print(f"[raylpclip] zero-shot acc1 {summary['acc1']:.3f} (chance {chance:.3f}), "
              f"acc5 {summary.get('acc5', 0):.3f}, mean_per_class_recall {summary.get('mean_per_class_recall', 0):.3f}")
    if summary.get("image_retrieval_recall@5") is not None:
        print(f"[raylpclip] retrieval recall@1/5/10: image {summary['image_retrieval_recall@1']:.3f}/"
              f"{summary['image_retrieval_recall@5']:.3f}/{summary['image_retrieval_recall@10']:.3f}, text "
              f"{summary['text_retrieval_recall@1']:.3f}/{summary['text_retrieval_recall@5']:.3f}/"
              f"{summary['text_retrieval_recall@10']:.3f}")
    if summary.get("skipped"):
        print(f"[raylpclip] skipped (bad input): {summary['skipped']}")
    print(f"[raylpclip] {summary.get('samples_per_s') or 0:.0f} samples/s, {summary['wall_s']:.0f}s wall")
    print(f"[raylpclip] run directory: {summary['run_dir']}")
    print(f"[raylpclip] exported model: {summary.get('model_dir')}  (CLIPModel.from_pretrained loads it)")
