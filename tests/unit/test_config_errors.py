"""Every config error names the key and what it allows: one bad value per checked key of every
section of the pretraining config, unknown keys (listing the section's keys), wrong types (naming the
expected type), and the one-line message the command line prints for them."""

from __future__ import annotations

import dataclasses

import pytest

from raylpclip import cli
from raylpclip.config import ConfigError, PretrainConfig, load_config

# (override(s), the key the message must name, text the message must contain: the allowed values)
BAD_VALUES = [
    ("data.format=tfrecord", "data.format", "expected one of ['auto', 'webdataset', 'parquet']"),
    ("data.image_size=4", "data.image_size", "expected >= 8"),
    ("data.context_length=2", "data.context_length", "expected >= 4"),
    ("data.aug_scale_min=0", "data.aug_scale_min", "expected in (0, 1]"),
    ("data.decode_batch_size=-1", "data.decode_batch_size", "expected >= 0 (0: automatic)"),
    ("data.decode_concurrency=0", "data.decode_concurrency", "expected > 0"),
    ("data.shuffle_buffer=-1", "data.shuffle_buffer", "expected >= 0"),
    ("data.fail_after_bad=0", "data.fail_after_bad", "expected > 0"),
    (["data.train=/a", "data.sources=[{path: /b}]"], "data.sources", "either data.train or data.sources"),
    ("data.sources=[{path: ''}]", "data.sources.0.path", "required: a shard directory"),
    ("data.sources=[{path: /b, weight: 0}]", "data.sources.0.weight", "expected > 0"),
    ("data.sources=[{path: /b, format: zip}]", "data.sources.0.format", "expected one of ['auto', 'webdataset', 'parquet']"),
    ("data.s3.connect_timeout=0", "data.s3.connect_timeout", "expected > 0"),
    ("data.s3.max_attempts=0", "data.s3.max_attempts", "expected >= 1"),
    ("model.vocab_size=10", "model.vocab_size", "expected >= 300"),
    ("psd.a_max=2", "psd.a_max", "expected in [0, 1]"),
    ("psd.ramp=step", "psd.ramp", "expected one of ['linear', 'cosine', 'constant']"),
    ("psd.subset_fraction=1.5", "psd.subset_fraction", "expected in [0, 1]"),
    ("psd.teacher=ensemble", "psd.teacher", "expected one of ['self', 'ema']"),
    ("psd.ema_decay=1", "psd.ema_decay", "expected in (0, 1)"),
    ("psd.teacher_temperature=0", "psd.teacher_temperature", "expected > 0 or null"),
    ("optim.lr=0", "optim.lr", "expected > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay", "expected >= 0"),
    ("optim.beta1=1", "optim.beta1/beta2", "expected in [0, 1)"),
    ("optim.warmup_steps=-1", "optim.warmup_steps", "expected >= 0"),
    ("optim.schedule=step", "optim.schedule", "expected one of ['cosine', 'constant']"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio", "expected in [0, 1]"),
    ("optim.grad_clip=-1", "optim.grad_clip", "expected >= 0"),
    ("optim.accum_steps=0", "optim.accum_steps", "expected >= 1"),
    ("train.steps=0", "train.steps", "expected > 0"),
    ("train.num_workers=0", "train.num_workers", "expected >= 1"),
    ("train.checkpoint_every=-1", "train.checkpoint_every", "expected >= 0"),
    ("train.eval_every=-1", "train.eval_every", "expected >= 0"),
    ("train.log_every=0", "train.log_every", "expected > 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints", "expected >= 1"),
    ("train.precision=fp16", "train.precision", "expected one of ['fp32', 'bf16']"),
    ("train.cpus_per_worker=0", "train.cpus_per_worker", "expected > 0"),
    ("train.threads_per_worker=0", "train.threads_per_worker", "expected >= 1"),
    ("train.max_failures=-2", "train.max_failures", "expected >= -1"),
    ("train.min_workers=3", "train.min_workers", "expected 0 (fixed) to train.num_workers = 2"),
    ("train.worker_resources={GPU: 1}", "train.worker_resources", "expected custom resource names"),
    (["train.num_workers=3", "train.batch_size=128"], "train.batch_size", "not divisible by train.num_workers"),
    (["train.num_workers=4", "train.min_workers=3", "train.batch_size=64"], "train.batch_size",
     "not divisible by 3 workers (train.min_workers)"),
    ("train.batch_size=2", "train.batch_size", "contrastive losses need >= 2"),
    ("train.ema_decay=1", "train.ema_decay", "expected in [0, 1) (0: no EMA weights)"),
    ("export.weights=best", "export.weights", "expected one of ['raw', 'ema']"),
    ("export.weights=ema", "export.weights", "set train.ema_decay > 0"),
    ("eval.templates=[]", "eval.templates", "expected at least one template"),
    ("eval.templates=['a photo']", "eval.templates", "needs a '{}'"),
    ("loss.kind=sigmoid", "loss.kind", "expected one of ['clip', 'siglip']"),
    ("loss.siglip_dist=ring", "loss.siglip_dist", "set loss.kind=siglip"),
    ("ray.num_cpus=0", "ray.num_cpus", "expected >= 1"),
    ("name=a/b", "name", "expected a plain directory name"),
    # wrong types and unknown keys (OmegaConf's structured mode, worded by config._describe)
    ("train.steps=ten", "train.steps", "expected an integer"),
    ("optim.lr=fast", "optim.lr", "expected a number"),
    ("train.use_gpu=maybe", "train.use_gpu", "expected true or false"),
    ("psd.teacher_temperature=hot", "psd.teacher_temperature", "expected a number or null"),
    ("data.sources=3", "data.sources", "expected a list"),
    ("model.overrides=3", "model.overrides", "expected a mapping"),
    ("train=3", "train", "expected a mapping with keys steps, batch_size"),
    ("train.stepz=3", "train.stepz", "allowed keys (train): steps, batch_size"),
    ("data.s3.endpoint=x", "data.s3.endpoint", "allowed keys (data.s3): endpoint_url, region"),
    ("trian.steps=3", "trian", "allowed keys (top level): name, output_dir, data"),
    ("data.sources=[{path: /b, weight: heavy}]", "weight", "(a SourceConfig entry)"),
    ("data.sources=[{path: /b, wieght: 1}]", "wieght", "allowed keys (a SourceConfig entry): path, weight, format"),
]


@pytest.mark.parametrize("override,key,allowed", BAD_VALUES, ids=[str(v[0]) for v in BAD_VALUES])
def test_error_names_the_key_and_what_it_allows(override, key, allowed):
    overrides = override if isinstance(override, list) else [override]
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, overrides)
    message = str(err.value)
    assert f"config key '{key}'" in message, message
    assert allowed in message, message
    assert "\n" not in message


def test_every_checked_section_is_in_the_table():
    """A new section of the pretraining config gets rows here too."""
    sections = {f.name for f in dataclasses.fields(PretrainConfig) if dataclasses.is_dataclass(f.default_factory)}
    covered = {(v[1].split(".")[0]) for v in BAD_VALUES}
    assert sections <= covered, sections - covered


def test_command_line_prints_one_line_and_exits_2(capsys):
    assert cli.main(["pretrain", "train.precision=fp16", "data.train=/nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["raylpclip pretrain: config key 'train.precision': got 'fp16', expected one of ['fp32', 'bf16']"]


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(PretrainConfig, str(tmp_path / "nope.yaml"))
