"""`raylpclip <command> [config.yaml] [key=value ...]`.

Every command resolves its config (defaults <- YAML <- overrides) before doing any work, writes
`summary.json` into its output directory and prints that path as its last line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable

from raylpclip.config import ConfigError, PretrainConfig, load_config

USAGE = "raylpclip COMMAND [CONFIG.yaml] [key=value ...]"


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """The optional YAML path (first argument without '='), then the dotlist overrides."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_demo(args: list[str]) -> Path:
    from raylpclip.commands.demo import DemoConfig, run_demo

    path, overrides = _split(args)
    cfg = load_config(DemoConfig, path, overrides)
    summary = run_demo(cfg)
    _print_result(summary)
    return Path(summary["run_dir"]) / "summary.json"


def cmd_pretrain(args: list[str]) -> Path:
    from raylpclip.runtime.train.pretrain_driver import run_pretrain

    path, overrides = _split(args)
    cfg = load_config(PretrainConfig, path, overrides)
    if not cfg.data.train_sources():
        raise ConfigError("config key 'data.train': required (a shard directory, glob, brace range or s3:// URL), "
                          "or data.sources")
    summary = run_pretrain(cfg)
    _print_result(summary)
    return Path(summary["run_dir"]) / "summary.json"


def _lazy(spec: str) -> Callable[[list[str]], Path]:
    """A command implemented in `module:function`, imported only when it runs (so `raylpclip demo` does
    not pay for importing Ray Tune, and each command lives in its own module)."""

    def run(args: list[str]) -> Path:
        module, function = spec.split(":")
        return getattr(importlib.import_module(module), function)(args)

    return run


def _print_result(summary: dict) -> None:
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


COMMANDS: dict[str, Callable[[list[str]], Path]] = {
    "bench": _lazy("raylpclip.bench:cmd_bench"),
    "demo": cmd_demo,
    "finetune": _lazy("raylpclip.commands.finetune:cmd_finetune"),
    "eval": _lazy("raylpclip.commands.evaluate:cmd_eval"),
    "probe": _lazy("raylpclip.commands.probe:cmd_probe"),
    "pretrain": cmd_pretrain,
    "scaling": _lazy("raylpclip.commands.scaling:cmd_scaling"),
    "shards": _lazy("raylpclip.commands.shards:cmd_shards"),
    "sweep": _lazy("raylpclip.commands.sweep:cmd_sweep"),
    "tokenizer": _lazy("raylpclip.commands.tokenizer:cmd_tokenizer"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raylpclip", usage=USAGE, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [key=value ...]")
    ns = parser.parse_args(argv)
    try:
        summary_path = COMMANDS[ns.command](ns.args)
    except ConfigError as exc:
        print(f"raylpclip {ns.command}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as exc:  # missing shards, bad data, unreachable storage
        print(f"raylpclip {ns.command}: error: {exc}", file=sys.stderr)
        return 1
    print(summary_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
