"""Robustness figures are written as valid PNGs, headless, without pyplot; the new eval modules stay Ray-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from raylpclip.eval.calibration import reliability_bins
from raylpclip.eval.robustness_plots import plot_accuracy_vs_severity, plot_reliability, plot_table_bars

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()  # a truncated or garbled file fails here
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_accuracy_vs_severity_png(tmp_path):
    results = {
        "zero-shot": {0: 0.88, 1: 0.80, 2: 0.74, 3: 0.66, 4: 0.58, 5: 0.49},
        "LP-CLIP": {0: 0.91, 1: 0.85, 2: 0.80, 3: 0.74, 4: 0.67, 5: 0.60},
        "clean only": {0: 0.90},  # a method without corrupted runs is a single point
    }
    path = plot_accuracy_vs_severity(results, tmp_path / "nested" / "dir" / "acc.png")
    assert path == tmp_path / "nested" / "dir" / "acc.png"
    _assert_png(path)


def test_reliability_png_from_reliability_bins(tmp_path):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (400,), generator=gen)
    logits = torch.randn(400, 10, generator=gen)
    sharp = logits.clone()
    sharp[torch.arange(400), labels] += 3.0  # mostly right and confident
    bins = {
        "zero-shot": reliability_bins(logits.softmax(dim=1), labels),  # near chance: many empty bins (nan)
        "LP-CLIP": reliability_bins((sharp * 2).softmax(dim=1), labels),
    }
    assert any(n == 0 for n in bins["zero-shot"]["count"])
    _assert_png(plot_reliability(bins, tmp_path / "reliability.png"))


def test_table_bars_png_with_missing_cells(tmp_path):
    table = {
        "gaussian_noise": {"zero-shot": 0.41, "LP-CLIP": 0.55, "CAR-FT": 0.52},
        "defocus_blur": {"zero-shot": 0.62, "LP-CLIP": 0.70},  # CAR-FT not run here: a gap
        "contrast": {"CAR-FT": 0.66, "zero-shot": 0.60, "LP-CLIP": 0.63},
    }
    _assert_png(plot_table_bars(table, str(tmp_path / "bars.png"), title="severity 3"))


def test_empty_inputs_raise(tmp_path):
    for fn in (plot_accuracy_vs_severity, plot_reliability, plot_table_bars):
        with pytest.raises(ValueError, match="at least one"):
            fn({}, tmp_path / "x.png")


_HEADLESS_SCRIPT = """
import os, sys, tempfile
os.environ.pop("DISPLAY", None)
import raylpclip.eval.calibration, raylpclip.eval.corruptions, raylpclip.eval.robustness_plots as plots
path = plots.plot_accuracy_vs_severity({"m": {0: 1.0, 1: 0.5}}, os.path.join(tempfile.mkdtemp(), "a.png"))
print("ray" in sys.modules, "matplotlib.pyplot" in sys.modules, open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n")
"""


def test_headless_without_pyplot_or_ray():
    # A fresh interpreter: in this one other tests may already have imported pyplot or ray.
    out = subprocess.run([sys.executable, "-c", _HEADLESS_SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr
