"""`raylpclip probe CONFIG [key=value ...]`: LP-CLIP on a frozen CLIP (see raylpclip.runtime.train.probe_driver)."""

from __future__ import annotations

from pathlib import Path


def cmd_probe(args: list[str]) -> Path:
    from raylpclip.cli import _split
    from raylpclip.runtime.train.probe_driver import load_probe_config, run_probe

    path, overrides = _split(args)
    summary = run_probe(load_probe_config(path, overrides))
    if "pseudo_label_acc_r1" in summary:
        print(f"[raylpclip] round-1 pseudo-labels agree with the true labels on {summary['pseudo_label_acc_r1']:.3f} "
              f"of the training images (a diagnostic; training never reads them)")
    print(f"[raylpclip] probe finished in {summary['wall_s']:.0f}s; classifiers in {summary['run_dir']}/classifiers")
    return Path(summary["run_dir"]) / "summary.json"
