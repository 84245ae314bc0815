"""Sweep configs without Ray: search-space expressions, keys, loading, trial configs, sizing, ASHA."""

from __future__ import annotations

import json
import tempfile
import textwrap

import pytest

from raylpclip.config import ConfigError, PretrainConfig, load_config, save_config
from raylpclip.experiments.search_expressions import Dim, parse_value
from raylpclip.experiments.sweep_space import (asha_settings, check_key, check_same_sweep, corner_configs, load_sweep,
                                               max_concurrent, sweep_plan, trial_config, trial_need)


@pytest.mark.parametrize("text, kind, args", [
    ("loguniform(1e-5, 1e-3)", "loguniform", [1e-5, 1e-3]),
    ("uniform(0, 0.5)", "uniform", [0, 0.5]),
    ("randint(1, 4)", "randint", [1, 4]),
    ("choice(64, 128)", "choice", [64, 128]),
    ("choice(self, 'ema', \"a, b\", true, null)", "choice", ["self", "ema", "a, b", True, None]),
    ("  uniform( -1.5 ,2e1 ) ", "uniform", [-1.5, 20.0]),
])
def test_expressions_parse(text, kind, args):
    assert parse_value("k", text) == Dim("k", kind, args)


def test_list_is_a_choice_and_plain_values_are_fixed():
    assert parse_value("psd.a_max", [0.2, 0.5]) == Dim("psd.a_max", "choice", [0.2, 0.5])
    for plain in (3, 0.5, "ema", True, None):
        assert parse_value("k", plain) is None


@pytest.mark.parametrize("text, expected", [
    ("unif(1, 2)", "unknown distribution 'unif'"),
    ("uniform(1)", "uniform takes two numbers"),
    ("uniform(a, b)", "uniform takes two numbers"),
    ("uniform(2, 1)", "expected low < high"),
    ("loguniform(0, 1)", "loguniform needs 0 < low"),
    ("randint(1.5, 3)", "randint takes two integers"),
    ("choice()", "at least one value"),
    ("choice(1,,2)", "empty argument"),
    ("uniform(1, 2", "cannot parse"),
])
def test_malformed_expressions_name_the_key(text, expected):
    with pytest.raises(ConfigError, match=r"sweep\.space\.optim\.lr") as err:
        parse_value("optim.lr", text)
    assert expected in str(err.value)


def test_choices_of_lists_are_refused():
    with pytest.raises(ConfigError, match=r"sweep\.space\.eval\.templates.*choices must be"):
        parse_value("eval.templates", [["a {}"], ["b {}"]])


@pytest.mark.parametrize("key, expected", [
    ("optim.lrr", "'optim.lrr' is not a pretrain config key; optim has"),
    ("foo", "'foo' is not a pretrain config key"),
    ("optim", "names a whole section"),
    ("optim.lr.x", "'optim.lr' is a value, not a section"),
    ("name", "set by the sweep"),
    ("ray.num_cpus", "set by the sweep"),
])
def test_unknown_keys_name_the_key(key, expected):
    with pytest.raises(ConfigError, match=rf"sweep\.space\.{key}") as err:
        check_key(key)
    assert expected in str(err.value)


def test_known_keys_pass():
    for key in ("optim.lr", "psd.a_max", "train.batch_size", "data.aug_scale_min", "model.overrides.vision.x"):
        check_key(key)


def override(key, value) -> str:
    """`key=value` as a user types it on the command line (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def test_override_round_trips_values_as_the_command_line_reads_them():
    cfg = load_config(PretrainConfig, None, [override("optim.lr", 1e-05), override("psd.teacher", "ema"),
                                             override("train.steps", 7), override("psd.teacher_temperature", None),
                                             override("eval.templates", ["x {}", "y {}"])])
    assert cfg.optim.lr == 1e-05 and isinstance(cfg.optim.lr, float)
    assert (cfg.psd.teacher, cfg.train.steps, cfg.psd.teacher_temperature) == ("ema", 7, None)
    assert cfg.eval.templates == ["x {}", "y {}"]


def test_a_trial_config_is_load_config_of_the_same_overrides(tmp_path, monkeypatch):
    """A Tune trial's sampled values (numpy scalars included) go through load_config as a mapping, with no
    temporary file: the same config as typing them on the command line over the same base YAML."""
    import numpy as np

    base_yaml = _write(tmp_path, "base.yaml", "data: {train: /d, eval: /e}\ntrain: {num_workers: 2}\n")
    base = load_config(PretrainConfig, base_yaml)
    values = {"optim.lr": np.float64(1e-05), "psd.a_max": 0.25, "train.batch_size": np.int64(64),
              "psd.teacher_temperature": None, "model.overrides.vision.image_size": 32}
    def no_temporary_files(*args, **kwargs):
        raise AssertionError("a trial's config must not go through a temporary file")

    monkeypatch.setattr(tempfile, "mkdtemp", no_temporary_files)
    monkeypatch.setattr(tempfile, "mkstemp", no_temporary_files)
    trial = trial_config(base, values, name="t1")
    typed = load_config(PretrainConfig, base_yaml, [override(k, v.item() if hasattr(v, "item") else v)
                                                    for k, v in values.items()] + ["name=t1"])
    assert trial == typed
    assert isinstance(trial.train.batch_size, int) and trial.optim.lr == 1e-05



def test_trial_config_validates_like_the_command_line():
    base = load_config(PretrainConfig, None, ["train.num_workers=2"])
    cfg = trial_config(base, {"optim.lr": 3e-4, "psd.a_max": 0.25, "name": "t1"})
    assert (cfg.optim.lr, cfg.psd.a_max, cfg.name, cfg.train.num_workers) == (3e-4, 0.25, "t1", 2)
    with pytest.raises(ConfigError, match=r"psd\.a_max"):
        trial_config(base, {"psd.a_max": 1.5})
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        trial_config(base, {"train.batch_size": 31})  # not divisible by 2 workers


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_load_sweep_merges_base_inline_and_command_line(tmp_path):
    base = _write(tmp_path, "base.yaml", """
        name: base-name
        data: {train: /d/train, eval: /d/eval}
        optim: {lr: 0.002, warmup_steps: 5}
        train: {steps: 50, eval_every: 25}
    """)
    sweep = _write(tmp_path, "sweep.yaml", f"""
        base: {base}
        name: my-sweep
        optim: {{warmup_steps: 7}}
        sweep:
          num_samples: 3
          space:
            optim.lr: loguniform(1e-5, 1e-3)
            psd.a_max: [0.2, 0.5]
            train.batch_size: choice(64, 128)
            psd.teacher: ema
    """)
    spec = load_sweep(sweep, ["train.steps=60", "sweep.num_samples=5", "sweep.search=random"])
    assert spec.name == "my-sweep" and spec.base.data.train == "/d/train"
    assert (spec.base.optim.lr, spec.base.optim.warmup_steps, spec.base.train.steps) == (0.002, 7, 60)
    assert spec.base.psd.teacher == "ema" and spec.fixed == {"psd.teacher": "ema"}  # plain value: fixed override
    assert (spec.settings.num_samples, spec.settings.search) == (5, "random")
    assert [(d.key, d.kind) for d in spec.dims] == [("optim.lr", "loguniform"), ("psd.a_max", "choice"),
                                                    ("train.batch_size", "choice")]


def test_load_sweep_errors_name_the_key(tmp_path):
    sweep = _write(tmp_path, "s.yaml", """
        data: {train: /d, eval: /e}
        sweep:
          space: {optim.lr: [0.1, 0.2]}
    """)
    cases = [(["sweep.metricz=acc1"], r"sweep\.metricz"), (["sweep.mode=up"], r"sweep\.mode"),
             (["sweep.search=bayes"], r"sweep\.search"), (["sweep.num_samples=0"], r"sweep\.num_samples"),
             (["optim.lrr=1"], r"optim\.lrr"), (["sweep.scheduler=pbt"], r"sweep\.scheduler")]
    for overrides, key in cases:
        with pytest.raises(ConfigError, match=key):
            load_sweep(sweep, overrides)
    empty = _write(tmp_path, "empty.yaml", "data: {train: /d}\nsweep: {space: {train.steps: 5}}\n")
    with pytest.raises(ConfigError, match=r"sweep\.space'.*at least one swept key"):
        load_sweep(empty)
    with pytest.raises(ConfigError, match=r"'base'.*not found"):
        load_sweep(sweep, ["base=/nowhere.yaml"])
    no_eval = _write(tmp_path, "noeval.yaml", "data: {train: /d}\nsweep: {space: {optim.lr: [0.1, 0.2]}}\n")
    with pytest.raises(ConfigError, match=r"sweep\.metric.*data\.eval is empty"):
        load_sweep(no_eval)
    ranges = _write(tmp_path, "grid.yaml", "data: {train: /d, eval: /e}\n"
                    "sweep: {search: grid, space: {optim.lr: 'uniform(0.1, 0.2)'}}\n")
    with pytest.raises(ConfigError, match=r"sweep\.search.*grid search takes lists"):
        load_sweep(ranges)


def test_a_demo_base_brings_its_defaults_and_synthetic_data(tmp_path):
    sweep = _write(tmp_path, "s.yaml", """
        base: jobs/demo.yaml
        synthetic: {train_samples: 500}
        sweep: {space: {optim.lr: [0.001, 0.002]}}
    """)
    spec = load_sweep(sweep)
    assert spec.synthetic.train_samples == 500 and spec.synthetic.eval_samples == 1000  # demo's, refined
    assert spec.base.name == "demo" and spec.base.data.context_length == 24  # the demo's pretrain defaults
    assert len(spec.base.eval.templates) > 1


def test_corner_configs_catch_impossible_values_before_any_trial(tmp_path):
    sweep = _write(tmp_path, "s.yaml", """
        data: {train: /d, eval: /e}
        train: {num_workers: 2}
        sweep: {space: {psd.a_max: 'uniform(0.5, 1.5)'}}
    """)
    with pytest.raises(ConfigError, match=r"sweep\.space\.psd\.a_max.*1\.5.*psd\.a_max"):
        corner_configs(load_sweep(sweep))
    sweep = _write(tmp_path, "b.yaml", """
        data: {train: /d, eval: /e}
        train: {num_workers: 2}
        sweep: {space: {train.batch_size: [64, 31], optim.lr: 'loguniform(1e-4, 1e-2)'}}
    """)
    with pytest.raises(ConfigError, match=r"sweep\.space\.train\.batch_size.*31"):
        corner_configs(load_sweep(sweep))
    fine = _write(tmp_path, "c.yaml", """
        data: {train: /d, eval: /e}
        sweep: {space: {train.steps: 'randint(10, 21)', optim.lr: [0.1, 0.2, 0.3]}}
    """)
    configs = corner_configs(load_sweep(fine))
    assert [c.train.steps for c in configs[:2]] == [10, 20]  # randint's high is excluded
    assert [c.optim.lr for c in configs[2:]] == [0.1, 0.2, 0.3]


def test_best_yaml_round_trips_through_load_config(tmp_path):
    base = load_config(PretrainConfig, None, ["data.train=/d", "data.eval=/e", "name=sw", "train.num_workers=1"])
    best = trial_config(base, {"optim.lr": 0.00031, "psd.a_max": 0.25, "train.batch_size": 64, "name": "sw-best"})
    save_config(best, tmp_path / "best.yaml")
    again = load_config(PretrainConfig, str(tmp_path / "best.yaml"))
    assert again == best
    assert (again.optim.lr, again.psd.a_max, again.train.batch_size, again.name) == (0.00031, 0.25, 64, "sw-best")


def test_trial_need_counts_workers_decode_pools_and_a_read_cpu():
    cfg = load_config(PretrainConfig, None, ["data.eval=/e"])  # 2 workers x 1 CPU, 2 decode actors x 1 CPU
    assert trial_need(cfg) == {"CPU": 2 * 1.0 + 2 * 2 * 1.0 + 1.0}  # train + eval pools, one read CPU
    cfg = load_config(PretrainConfig, None, ["train.num_workers=4", "train.use_gpu=true", "train.cpus_per_worker=2",
                                             "data.decode_concurrency=3", "data.decode_cpus=0.5"])
    assert trial_need(cfg) == {"CPU": 4 * 2 + 1 * 3 * 0.5 + 1, "GPU": 4.0}  # no eval set: one pool


@pytest.mark.parametrize("cluster, need, requested, expected", [
    ({"CPU": 8.0}, {"CPU": 4.01}, 0, 1),
    ({"CPU": 16.0}, {"CPU": 4.01}, 0, 3),
    ({"CPU": 64.0, "GPU": 8.0}, {"CPU": 10.0, "GPU": 4.0}, 0, 2),  # GPUs are the limit
    ({"CPU": 64.0, "GPU": 8.0}, {"CPU": 40.0, "GPU": 1.0}, 0, 1),  # CPUs are the limit
    ({"CPU": 2.0}, {"CPU": 4.0}, 0, 1),  # never below one: that trial waits for resources
    ({"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}, 0, 1),  # no GPUs at all
    ({"CPU": 8.0}, {"CPU": 4.0}, 3, 3),  # requested wins
])
def test_max_concurrent_is_sized_to_the_cluster(cluster, need, requested, expected):
    assert max_concurrent(cluster, need, requested) == expected


def test_asha_settings_in_steps(tmp_path):
    sweep = _write(tmp_path, "s.yaml", """
        data: {train: /d, eval: /e}
        train: {steps: 100, eval_every: 25, log_every: 5}
        sweep: {space: {train.steps: [100, 300]}}
    """)
    spec = load_sweep(sweep)
    assert asha_settings(spec, corner_configs(spec)) == {"max_t": 300, "grace_period": 25, "reduction_factor": 2}
    spec = load_sweep(sweep, ["sweep.metric=loss", "sweep.mode=min"])  # in every report: from the first log
    assert asha_settings(spec, corner_configs(spec))["grace_period"] == 5
    spec = load_sweep(sweep, ["sweep.grace_period=400"])
    with pytest.raises(ConfigError, match=r"sweep\.grace_period.*beyond the longest trial"):
        asha_settings(spec, corner_configs(spec))


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    sweep = _write(tmp_path, "s.yaml", """
        data: {train: /d, eval: /e}
        sweep: {space: {optim.lr: [0.1, 0.2]}}
    """)
    saved = tmp_path / "sweep.yaml"
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(sweep_plan(load_sweep(sweep))), str(saved))
    check_same_sweep(saved, sweep_plan(load_sweep(sweep, ["sweep.max_concurrent_trials=3"])))  # free to change
    with pytest.raises(ConfigError, match=r"already exists.*sweep\.space\.optim\.lr"):
        check_same_sweep(saved, sweep_plan(load_sweep(sweep, ["sweep.space={optim.lr: [0.3]}"])))
    with pytest.raises(ConfigError, match=r"already exists.*base\.train\.steps"):
        check_same_sweep(saved, sweep_plan(load_sweep(sweep, ["train.steps=5"])))


def test_cli_refuses_a_bad_sweep_with_one_line_naming_the_key(tmp_path, capsys):
    from raylpclip.cli import main

    sweep = _write(tmp_path, "s.yaml", """
        data: {train: /d, eval: /e}
        sweep: {space: {optim.lrr: 'loguniform(1e-4, 1e-2)'}}
    """)
    assert main(["sweep", sweep]) == 2
    err = capsys.readouterr().err
    assert "raylpclip sweep: config key 'sweep.space.optim.lrr'" in err and "optim has" in err
