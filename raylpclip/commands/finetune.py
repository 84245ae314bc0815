"""`raylpclip finetune CONFIG.yaml [key=value ...]`: ft or CAR-FT on labelled shards, then WiSE-FT mixtures."""

from __future__ import annotations

from pathlib import Path

from raylpclip.methods.finetune_config import load_finetune_config, require_inputs


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def print_table(summary: dict) -> None:
    """One line per classifier directory: its ID (clean eval set) metrics and where it is."""
    rows = summary.get("id") or {}
    if rows:
        print(f"[raylpclip] {'classifier':<22} {'ID acc1':>8} {'acc5':>7} {'ece':>7} {'nll':>7}")
        for name, m in rows.items():
            print(f"[raylpclip] {name:<22} {m['acc1']:>8.4f} {m['acc5']:>7.4f} {m['ece']:>7.4f} {m['nll']:>7.4f}")
    for name, path in summary["classifiers"].items():
        print(f"[raylpclip] classifier {name}: {path}")
    if summary.get("skipped"):
        print(f"[raylpclip] skipped (bad or unlabelled input): {summary['skipped']}")
    print(f"[raylpclip] {summary.get('samples_per_s') or 0:.0f} samples/s, {summary['wall_s']:.0f}s wall")
    print(f"[raylpclip] run directory: {summary['run_dir']}")


def cmd_finetune(args: list[str]) -> Path:
    path, overrides = _split(args)
    cfg = load_finetune_config(path, overrides)
    require_inputs(cfg)
    from raylpclip.runtime.train.finetune_driver import run_finetune  # Ray is imported only once the config is good

    summary = run_finetune(cfg)
    print_table(summary)
    return Path(summary["run_dir"]) / "summary.json"
