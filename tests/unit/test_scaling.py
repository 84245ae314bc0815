"""Scaling experiments without Ray: shard subsets, per-point configs, the results table, gains, the plot
and config errors that name the key."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from raylpclip.config import ConfigError, flatten, save_config
from raylpclip.data.shard_files import resolve_shards
from raylpclip.experiments import scaling_report as report
from raylpclip.experiments.scaling_plan import (Point, finished_summary, load_scaling, plan_points, select_shards,
                                                shard_pattern)

REPO = Path(__file__).resolve().parents[2]


def _fake_shards(root: Path, successes: list[int]) -> Path:
    """Empty tars with img2dataset `_stats.json` beside them: enough for listing and counting."""
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(successes):
        (root / f"{i:05d}.tar").write_bytes(b"")
        (root / f"{i:05d}_stats.json").write_text(json.dumps({"count": n + 3, "successes": n}))
    return root


def _yaml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------ shard subsets

def test_select_shards_deterministic_nested_and_at_least_one():
    files = [f"/d/{i:05d}.tar" for i in range(50)]
    small, mid, full = (select_shards(files, f, seed=0) for f in (0.1, 0.3, 1.0))
    assert (len(small), len(mid), len(full)) == (5, 15, 50)
    assert select_shards(list(reversed(files)), 0.3, seed=0) == mid  # input order does not matter
    assert set(small) <= set(mid) <= set(full) == set(files)  # nested sizes
    assert select_shards(files, 0.3, seed=1) != mid
    assert select_shards(files, 0.001, seed=0) == select_shards(files, 0.02, seed=0)  # never empty: 1 shard
    assert len(select_shards(files, 0.001, seed=0)) == 1
    assert len(select_shards(files[:10], 0.25, seed=0)) == 3  # round half up: 2.5 -> 3
    with pytest.raises(ValueError, match="fraction"):
        select_shards(files, 0.0, seed=0)


def test_shard_pattern_names_exactly_the_chosen_files(tmp_path):
    root = _fake_shards(tmp_path / "s", [10] * 12)
    files, _ = resolve_shards(str(root))
    chosen = select_shards(files, 0.25, seed=3)
    pattern = shard_pattern(chosen)
    assert pattern.startswith(str(root) + "/{") and pattern.count(".tar") == 3
    assert resolve_shards(pattern)[0] == chosen
    assert shard_pattern(chosen[:1]) == chosen[0]
    with pytest.raises(ValueError, match="brace"):
        shard_pattern(["/a/x,y.tar", "/a/z.tar"])


def test_plan_points_counts_samples_from_stats_and_derives_configs(tmp_path):
    counts = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    root = _fake_shards(tmp_path / "train", counts)
    path = _yaml(tmp_path / "s.yaml", f"""
name: exp
output_dir: {tmp_path / 'out'}
data: {{train: {root}, eval: {root}}}
train: {{steps: 40, batch_size: 64}}
scaling:
  fractions: [1.0, 0.2]
  methods: {{clip: {{psd.a_max: 0}}, psd: {{psd: {{a_max: 0.3, teacher: ema}}}}}}
  seed: 7
""")
    points = plan_points(load_scaling(path))
    assert [p.name for p in points] == ["clip-f0.2", "psd-f0.2", "clip-f1", "psd-f1"]  # small first
    small = select_shards(resolve_shards(str(root))[0], 0.2, seed=7)
    expected_small = sum(counts[int(Path(f).stem)] for f in small)
    assert [p.train_samples for p in points] == [expected_small, expected_small, 5500, 5500]
    assert [p.shards for p in points] == [2, 2, 10, 10]
    clip, psd = points[0].cfg, points[1].cfg
    assert (clip.psd.a_max, psd.psd.a_max, psd.psd.teacher, clip.psd.teacher) == (0.0, 0.3, "ema", "self")
    assert resolve_shards(clip.data.train)[0] == small and points[2].cfg.data.train == str(root)
    assert clip.run_dir == tmp_path / "out" / "exp" / "clip-f0.2"
    assert {p.cfg.train.steps for p in points} == {40}  # steps: fixed is the default


def test_epochs_budget_scales_steps_with_data(tmp_path):
    root = _fake_shards(tmp_path / "train", [1000] * 4)
    path = _yaml(tmp_path / "s.yaml", f"""
data: {{train: {root}, eval: {root}}}
train: {{batch_size: 64}}
scaling: {{fractions: [0.25, 1.0], epochs: 2}}
""")
    steps = {p.name: p.cfg.train.steps for p in plan_points(load_scaling(path))}
    assert steps == {"clip-f0.25": 32, "psd-f0.25": 32, "clip-f1": 125, "psd-f1": 125}  # ceil(2*1000/64), 2*4000/64


def test_fractions_that_select_the_same_shards_are_rejected(tmp_path):
    root = _fake_shards(tmp_path / "train", [10] * 4)
    path = _yaml(tmp_path / "s.yaml", f"data: {{train: {root}, eval: {root}}}\nscaling: {{fractions: [0.1, 0.2, 1.0]}}\n")
    with pytest.raises(ConfigError, match=r"'scaling.fractions': 0.1 and 0.2 select the same shards \(1 of 4\)"):
        plan_points(load_scaling(path))


# ------------------------------------------------------------------------------------------ config

def test_base_then_inline_then_command_line(tmp_path):
    (tmp_path / "jobs").mkdir()
    _yaml(tmp_path / "jobs" / "base.yaml", "train: {steps: 800, batch_size: 64}\npsd: {ramp: cosine}\ndata: {train: /x, eval: /y}\n")
    path = _yaml(tmp_path / "jobs" / "s.yaml", "base: base.yaml\ntrain: {steps: 300}\n"
                 "scaling: {methods: {clip: {psd.a_max: 0}, psd: {psd.a_max: 0.5}}}\n")
    exp = load_scaling(path, ["train.batch_size=32", "scaling.methods.psd.psd.a_max=0.3", "scaling.fractions=[0.5,1.0]"])
    assert (exp.base.train.steps, exp.base.train.batch_size, exp.base.psd.ramp) == (300, 32, "cosine")
    assert exp.section.fractions == [0.5, 1.0]
    from raylpclip.experiments.scaling_plan import method_config
    assert method_config(exp, "psd").psd.a_max == 0.3 and method_config(exp, "clip").psd.a_max == 0.0


def test_default_methods_are_clip_and_psd_and_replaced_not_merged(tmp_path):
    path = _yaml(tmp_path / "s.yaml", "data: {train: /x, eval: /y}\n")
    assert set(load_scaling(path).section.methods) == {"clip", "psd"}
    path = _yaml(tmp_path / "t.yaml", "data: {train: /x, eval: /y}\nscaling: {baseline: a, treatment: b, "
                 "methods: {a: {psd.a_max: 0}, b: {optim.lr: 0.002}}}\n")
    assert set(load_scaling(path).section.methods) == {"a", "b"}


@pytest.mark.parametrize("overrides, key", [
    (["scaling.fractionz=[0.5]"], "'scaling.fractionz'"),
    (["scaling.fractions=[0.0,1.0]"], "'scaling.fractions'"),
    (["scaling.fractions=[]"], "'scaling.fractions'"),
    (["scaling.metric=loss"], "'scaling.metric'"),
    (["scaling.baseline=plain"], "'scaling.baseline'"),
    (["scaling.steps=300"], "'scaling.steps'"),
    (["scaling.steps=fixed", "scaling.epochs=3"], "'scaling.epochs'"),
    (["scaling.methods.psd.psd.a_maxx=0.3"], "'scaling.methods.psd.psd.a_maxx'"),
    (["scaling.methods.psd.data.train=/z"], "'scaling.methods.psd.data.train'"),
    (["scaling.methods.psd.psd.a_max=2"], "scaling.methods.psd: config key 'psd.a_max'"),
    (["scaling.methods.psd.psd.a_max=abc"], "'scaling.methods.psd.psd.a_max'"),
    (["data.eval="], "'data.eval'"),
    (["data.train="], "'data.train'"),
    (["train.stepz=3"], "'train.stepz'"),
    (["base=nowhere.yaml"], "'base'"),
    (["base=bad_base.yaml"], "config key 'psd.a_maxx': Key 'a_maxx' not in 'PSDConfig'"),
    (["synthetic.train_sampels=10"], "'synthetic.train_sampels'"),
])
def test_config_errors_name_the_key(tmp_path, overrides, key):
    path = _yaml(tmp_path / "s.yaml", "data: {train: /x, eval: /y}\n")
    _yaml(tmp_path / "bad_base.yaml", "psd: {a_maxx: 0.3}\n")
    with pytest.raises(ConfigError) as err:
        load_scaling(path, overrides)
    assert key in str(err.value), str(err.value)


def test_recipes_load(tmp_path):
    cifar = load_scaling(str(REPO / "jobs" / "scaling-cifar10.yaml"))
    assert cifar.base.model.vocab_size == 512 and cifar.base.train.steps == 300  # base cifar10.yaml, then the recipe
    assert cifar.section.fractions == [0.1, 0.3, 1.0] and cifar.base.data.train.endswith("cifar10-train-mm30")
    demo = load_scaling(str(REPO / "jobs" / "scaling-demo.yaml"))
    assert demo.synthetic.mismatch_fraction == 0.3 and len(demo.section.fractions) == 3


def test_command_line_error_exits_2_naming_the_key(tmp_path):
    path = _yaml(tmp_path / "s.yaml", "data: {train: /x, eval: /y}\nscaling: {fractions: [2.0]}\n")
    out = subprocess.run([sys.executable, "-m", "raylpclip", "scaling", path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "'scaling.fractions'" in out.stderr and "Traceback" not in out.stderr


def test_finished_point_is_reused_only_with_the_same_config(tmp_path):
    root = _fake_shards(tmp_path / "train", [10] * 2)
    path = _yaml(tmp_path / "s.yaml", f"output_dir: {tmp_path}\ndata: {{train: {root}, eval: {root}}}\n"
                 "scaling: {fractions: [1.0]}\n")
    point = plan_points(load_scaling(path))[0]
    assert finished_summary(point) is None
    save_config(point.cfg, point.cfg.run_dir / "config.yaml")
    (point.cfg.run_dir / "summary.json").write_text(json.dumps({"acc1": 0.5}))
    assert finished_summary(point) == {"acc1": 0.5}
    older = (point.cfg.run_dir / "config.yaml").read_text().replace("  warmup_steps: 50\n", "")
    assert "warmup_steps" not in older
    (point.cfg.run_dir / "config.yaml").write_text(older)  # a version without that key: still the same run
    assert finished_summary(point) == {"acc1": 0.5}
    changed = plan_points(load_scaling(path, ["optim.lr=0.01"]))[0]
    with pytest.raises(ConfigError, match=r"clip-f1: .* different config \(optim.lr\)"):
        finished_summary(changed)


# ------------------------------------------------------------------------------------------ results

def _point(method, fraction, samples, shards=1):
    cfg = SimpleNamespace(train=SimpleNamespace(steps=100, batch_size=50))
    return Point(method, fraction, shards, samples, cfg)


def _rows(values):
    """values: (method, fraction, samples, acc1) -> table rows as run_scaling builds them."""
    return [report.result_row(_point(m, f, n), {"acc1": a, "acc5": 0.9, "step": 100, "samples_seen": 5000,
                                                 "wall_s": 12.5, "run_dir": f"/r/{m}-{f}", "chance_acc1": 0.1})
            for m, f, n, a in values]


def test_gains_and_whether_they_grow():
    rows = _rows([("clip", 0.1, 1000, 0.30), ("psd", 0.1, 1000, 0.31), ("clip", 0.5, 5000, 0.40),
                  ("psd", 0.5, 5000, 0.43), ("clip", 1.0, 10000, 0.50), ("psd", 1.0, 10000, 0.56)])
    gains = report.gains(rows, metric="acc1", baseline="clip", treatment="psd")
    assert [g["train_samples"] for g in gains] == [1000, 5000, 10000]
    assert [round(g["gain"], 6) for g in gains] == [0.01, 0.03, 0.06]
    assert report.grows(gains) is True
    rows[-1]["acc1"] = 0.52  # gain at 10k drops to 0.02 < 0.03
    assert report.grows(report.gains(rows, metric="acc1", baseline="clip", treatment="psd")) is False
    assert report.grows(gains[:1]) is None
    flat = [{"gain": 0.02}, {"gain": 0.02}]
    assert report.grows(flat) is False  # "grows" means strictly larger at every step up


def test_gain_skips_sizes_missing_a_method():
    rows = _rows([("clip", 0.1, 1000, 0.30), ("psd", 0.1, 1000, 0.35), ("clip", 1.0, 10000, 0.50)])
    gains = report.gains(rows, metric="acc1", baseline="clip", treatment="psd")
    assert len(gains) == 1 and gains[0]["fraction"] == 0.1 and round(gains[0]["gain"], 6) == 0.05


def test_results_csv_columns_and_values(tmp_path):
    rows = _rows([("clip", 0.1, 1000, 0.30), ("psd", 0.1, 1000, 0.31)])
    rows[1]["acc5"] = None
    path = report.write_csv(rows, tmp_path / "results.csv")
    with open(path) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["method", "fraction", "shards", "train_samples", "steps", "batch_size", "samples_seen",
                              "epochs", "acc1", "acc5", "wall_s", "run_dir"]  # only metrics some row has
    assert table[0]["epochs"] == "5.0" and table[1]["acc1"] == "0.31" and table[1]["acc5"] == ""
    assert [r["method"] for r in table] == ["clip", "psd"] and table[0]["train_samples"] == "1000"


def test_plot_is_a_png(tmp_path):
    rows = _rows([("clip", 0.1, 1000, 0.30), ("psd", 0.1, 1000, 0.31), ("clip", 1.0, 10000, 0.5), ("psd", 1.0, 10000, 0.6)])
    gains = report.gains(rows, metric="acc1", baseline="clip", treatment="psd")
    path = report.plot_scaling(rows, gains, tmp_path / "p" / "scaling.png", metric="acc1", baseline="clip", treatment="psd")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    one = report.plot_scaling(rows[:1], [], tmp_path / "one.png", metric="acc1", baseline="clip", treatment="psd")
    assert one.read_bytes()[:4] == b"\x89PNG"  # a single point (an experiment just started) still plots


def test_loading_and_planning_write_no_temporary_config_files(tmp_path, monkeypatch):
    """The experiment YAML, its base and every method's overrides go through load_config as mappings."""
    import tempfile

    def no_temporary_files(*args, **kwargs):
        raise AssertionError("a scaling config must not go through a temporary file")

    root = _fake_shards(tmp_path / "train", [10] * 4)
    _yaml(tmp_path / "base.yaml", "train: {steps: 800, batch_size: 64}\n")
    path = _yaml(tmp_path / "s.yaml", f"base: base.yaml\ndata: {{train: {root}, eval: {root}}}\n"
                 "scaling: {fractions: [0.5, 1.0], methods: {clip: {psd.a_max: 0}, psd: {model.overrides: "
                 "{vision.image_size: 32}}}}\n")
    monkeypatch.setattr(tempfile, "mkdtemp", no_temporary_files)
    monkeypatch.setattr(tempfile, "mkstemp", no_temporary_files)
    points = plan_points(load_scaling(path, ["scaling.methods.psd.psd.a_max=0.3"]))
    psd = next(p for p in points if p.method == "psd")
    assert psd.cfg.psd.a_max == 0.3 and flatten(psd.cfg.model.overrides) == {"vision.image_size": 32}
    assert {p.cfg.train.steps for p in points} == {800}
