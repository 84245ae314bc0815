from pathlib import Path

import pytest

from raylpclip.config import ConfigError, DataConfig, PretrainConfig, from_dict, load_config, save_config, to_dict

REPO = Path(__file__).resolve().parents[2]


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  steps: 7\n  batch_size: 64\npsd:\n  a_max: 0.3\n")
    cfg = load_config(PretrainConfig, str(recipe), ["psd.a_max=0.2", "optim.lr=0.01"])
    assert cfg.train.steps == 7 and cfg.train.batch_size == 64  # from YAML
    assert cfg.psd.a_max == 0.2  # command line beats YAML
    assert cfg.optim.lr == 0.01
    assert cfg.optim.warmup_steps == PretrainConfig().optim.warmup_steps  # default kept


@pytest.mark.parametrize("override, key", [
    (["train.bogus=1"], "train.bogus"),
    (["train.steps=abc"], "train.steps"),
    (["psd.a_max=1.5"], "psd.a_max"),
    (["psd.a_max=-0.1"], "psd.a_max"),
    (["train.batch_size=129"], "train.batch_size"),
    (["train.num_workers=3", "train.batch_size=128"], "train.batch_size"),
    (["optim.accum_steps=0"], "optim.accum_steps"),
    (["psd.ramp=zigzag"], "psd.ramp"),
    (["psd.teacher=oracle"], "psd.teacher"),
    (["data.format=csv"], "data.format"),
    (["train.precision=fp8"], "train.precision"),
    (["eval.templates=[a photo]"], "eval.templates"),
    (["name=../escape"], "name"),
])
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, override)
    assert f"'{key}'" in str(err.value)


def test_batch_not_divisible_by_workers_names_both_keys():
    with pytest.raises(ConfigError, match="train.num_workers"):
        load_config(PretrainConfig, None, ["train.num_workers=3", "train.batch_size=100"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(PretrainConfig, str(tmp_path / "nope.yaml"))


def test_round_trip_through_dict_and_saved_yaml(tmp_path):
    cfg = load_config(PretrainConfig, None, ["psd.teacher_temperature=0.05", "model.overrides={vision.image_size: 32}"])
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, str(tmp_path / "config.yaml")) == cfg


@pytest.mark.parametrize("recipe", ["pretrain.yaml", "demo.yaml"])
def test_shipped_recipes_validate(recipe):
    from raylpclip.commands.demo import DemoConfig

    cls = DemoConfig if recipe == "demo.yaml" else PretrainConfig
    load_config(cls, str(REPO / "jobs" / recipe))


@pytest.mark.parametrize("image_size, rows", [(32, 1024), (64, 1024), (96, 455), (128, 256), (224, 256)])
def test_automatic_decode_rows_keep_a_call_near_12_mib_of_images(image_size, rows):
    assert DataConfig(image_size=image_size).decode_rows() == rows  # 12 MiB / (3 x size^2), in [256, 1024]


def test_a_set_decode_batch_size_is_used_as_is():
    assert DataConfig(image_size=224, decode_batch_size=1000).decode_rows() == 1000
    assert load_config(PretrainConfig, overrides=["data.decode_batch_size=64"]).data.decode_rows() == 64
