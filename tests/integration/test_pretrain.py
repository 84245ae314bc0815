"""Pretraining and the demo on the shared local Ray instance: both img2dataset formats, both PSD
teachers, accumulation and bf16 autocast on CPU."""

from __future__ import annotations

import json

import pytest
from transformers import CLIPModel

from raylpclip.commands.demo import DemoConfig, run_demo
from raylpclip.config import PretrainConfig, load_config
from raylpclip.runtime.train.pretrain_driver import run_pretrain

from .conftest import small_run

pytestmark = pytest.mark.ray


def test_parquet_ema_teacher_accumulation_bf16_retrieval_eval(ray_session, synthetic_shards, tmp_path):
    """Parquet training shards, EMA teacher, accumulation, bf16, and an unlabelled eval set of two
    captions per image: evaluated by retrieval."""
    overrides = small_run(synthetic_shards, tmp_path, name="pq", fmt="parquet", steps=12) + [
        "psd.teacher=ema", "optim.accum_steps=2", "train.precision=bf16", "train.eval_every=6",
        f"data.eval={synthetic_shards['captions']}",
    ]
    cfg = load_config(PretrainConfig, None, overrides)
    summary = run_pretrain(cfg)
    assert summary["step"] == 12 and summary["samples_seen"] == 12 * 32
    assert summary["num_classes"] == 0 and "acc1" not in summary
    assert (summary["eval_images"], summary["eval_texts"]) == (120, 240)
    for k in (1, 5, 10):
        assert 0.0 <= summary[f"image_retrieval_recall@{k}"] <= 1.0
    assert summary["image_retrieval_recall@1"] <= summary["image_retrieval_recall@10"]
    assert summary["samples_per_s"] > 0 and summary["wall_s"] > 0
    saved = json.loads((tmp_path / "pq" / "summary.json").read_text())
    assert saved["text_retrieval_recall@5"] == summary["text_retrieval_recall@5"]
    assert (tmp_path / "pq" / "config.yaml").is_file() and (tmp_path / "pq" / "tokenizer").is_dir()
    assert CLIPModel.from_pretrained(summary["model_dir"], local_files_only=True).config.projection_dim == 128


def test_demo_learns_beyond_chance(ray_session, tmp_path, classnames):
    """A shortened demo: generation, training, eval, export, summary. Even 60 steps beat chance (1/36)
    clearly on the procedural data; the full demo's figure is in the README."""
    cfg = load_config(DemoConfig, None, [
        f"pretrain.output_dir={tmp_path}", "synthetic.train_samples=3000", "synthetic.eval_samples=720",
        "synthetic.samples_per_shard=1000", "pretrain.train.steps=60", "pretrain.train.eval_every=0",
        "pretrain.train.checkpoint_every=30", "pretrain.model.vocab_size=512",
    ])
    summary = run_demo(cfg)
    for key in ("acc1", "acc5", "mean_per_class_recall", "num_classes", "samples_per_s", "wall_s", "run_dir"):
        assert summary[key] is not None, key
    assert summary["acc1"] >= 2 * summary["chance_acc1"], summary
    assert summary["num_classes"] == len(classnames) == 36
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["data_dir"] == summary["data_dir"]
