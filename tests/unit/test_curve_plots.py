"""`raylpclip plot RUN_DIR`: curves.png from a run's metrics.jsonl, a panel per kind of figure the run
reported (eval/curve_plots.py, commands/plot.py)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from raylpclip.cli import main
from raylpclip.commands.plot import CURVES_FILE, draw_run_curves, plot_run
from raylpclip.eval.curve_plots import panels_for

PRETRAIN_PANELS = ["loss", "learning rate", "PSD a_t", "logit scale", "throughput", "data wait", "evaluation"]


def _pretrain_rows() -> list[dict]:
    rows = []
    for step in range(5, 105, 5):
        row = {"step": step, "loss": 5.0 - step / 50, "contrastive_loss": 4.0 - step / 50, "lr": 1e-3 * min(1, step / 20),
               "psd_alpha": 0.2 * step / 100, "logit_scale": 14.3 + step / 10, "samples_per_s": 800.0 + step,
               "train_samples_per_s": 780.0, "data_wait_fraction": 0.1, "epoch": step / 50, "skipped_decode": 1}
        if step % 25 == 0:  # evaluated every 25 steps only
            row.update(acc1=step / 200, acc5=step / 120)
        rows.append(row)
    return rows


def _write(run_dir, rows) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_command_draws_every_panel_and_writes_its_own_summary(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _write(run_dir, _pretrain_rows())
    (run_dir / "summary.json").write_text('{"the": "run\'s own"}')
    assert main(["plot", str(run_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(run_dir / "plot" / "summary.json")
    assert out[-2] == f"[raylpclip] curves: {(run_dir / CURVES_FILE).resolve()}"
    summary = json.loads((run_dir / "plot" / "summary.json").read_text())
    assert summary["panels"] == PRETRAIN_PANELS
    assert (summary["rows"], summary["first_step"], summary["last_step"]) == (20, 5, 100)
    assert "acc1" in summary["metrics"] and "skipped_decode" in summary["metrics"]
    assert json.loads((run_dir / "summary.json").read_text()) == {"the": "run's own"}  # left alone
    with Image.open(run_dir / CURVES_FILE) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 1200)  # 7 panels: 2 columns x 4 rows of 600 x 300 px
        assert len(image.convert("L").getcolors()) > 10  # drawn, not blank


def test_each_panel_takes_its_own_metrics():
    panels = {panel.title: keys for panel, keys in panels_for(_pretrain_rows())}
    assert panels["loss"] == ["contrastive_loss", "loss"]
    assert panels["evaluation"] == ["acc1", "acc5"]
    assert panels["throughput"] == ["samples_per_s", "train_samples_per_s"]
    assert not any("skipped_decode" in keys or "epoch" in keys for keys in panels.values())


def test_a_finetune_run_has_no_a_t_panel_and_a_probe_only_its_rounds(tmp_path):
    finetune = [{k: v for k, v in row.items() if k not in ("psd_alpha", "logit_scale")} | {"ce_loss": 1.0}
                for row in _pretrain_rows()]
    _write(tmp_path / "ft", finetune)
    assert plot_run(tmp_path / "ft")["panels"] == [p for p in PRETRAIN_PANELS if p not in ("PSD a_t", "logit scale")]
    probe = [{"step": 1, "coverage": 0.6, "pseudo_label_fit": 0.9, "pseudo_labelled": 60, "samples": 100},
             {"step": 2, "coverage": 0.7, "pseudo_label_fit": 0.92, "pseudo_label_change": 0.1, "pseudo_labelled": 70,
              "samples": 100}]
    _write(tmp_path / "probe", probe)
    drawn = plot_run(tmp_path / "probe")
    assert drawn["panels"] == ["LP-CLIP rounds"]
    assert {p.title: k for p, k in panels_for(probe)}["LP-CLIP rounds"] == [
        "coverage", "pseudo_label_change", "pseudo_label_fit"]
    with Image.open(drawn["curves"]) as image:
        assert image.size == (600, 300)


def test_no_curves_is_one_line_from_the_command_and_never_fails_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "no training curves" in capsys.readouterr().err
    assert draw_run_curves(tmp_path) is None  # the trainers' end-of-run call
    assert "no curves.png" in capsys.readouterr().out
    _write(tmp_path, [{"step": 1, "unknown_figure": 1.0}])
    with pytest.raises(ValueError, match="no metric to plot"):
        plot_run(tmp_path)
    assert not (tmp_path / CURVES_FILE).exists()
