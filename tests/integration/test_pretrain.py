"""Pretraining and the demo on the shared local Ray instance: both img2dataset formats, both PSD
teachers, accumulation and bf16 autocast on CPU."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from transformers import CLIPModel, pipeline

from raylpclip.commands.demo import DemoConfig, run_demo
from raylpclip.config import PretrainConfig, load_config
from raylpclip.experiments.demo_data import split_dirs
from raylpclip.runtime.train.pretrain_driver import run_pretrain

from .conftest import small_run

pytestmark = pytest.mark.ray
os.environ["HF_HUB_OFFLINE"] = "1"  # the exported model must load from its directory alone


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
    # The export is a complete Hugging Face model: transformers' own pipeline scores the demo's classes on an
    # eval image, and the card beside it states the run's data and result.
    train_dir, eval_dir = split_dirs(Path(summary["data_dir"]))
    with tarfile.open(min(eval_dir.glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
    scores = pipeline("zero-shot-image-classification", model=summary["model_dir"])(
        image, candidate_labels=classnames, hypothesis_template="a {}.")
    assert sorted(r["label"] for r in scores) == sorted(classnames)
    assert sum(r["score"] for r in scores) == pytest.approx(1.0, abs=1e-4)
    card = (Path(summary["model_dir"]) / "README.md").read_text()
    assert f"`{train_dir}`" in card and "3,000 image-caption pairs in 3 shards" in card, card
    assert f"{summary['acc1']:.3f} (chance {summary['chance_acc1']:.3f})" in card, card


def test_curves_of_a_run_and_its_resume_in_jsonl_and_tensorboard(ray_session, synthetic_shards, tmp_path,
                                                                  monkeypatch):
    """Rank 0's metrics.jsonl and TensorBoard events of a short run hold the same values, and a resume
    continues them without a repeated step. output_dir is relative, as by default: the workers run in Ray's
    own working directory, yet write into the driver's run directory."""
    from raylpclip.engine.metrics_log import read_metrics

    from ..unit.test_metrics_log import assert_same_values, tensorboard_scalars

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "curves"
    run_pretrain(load_config(PretrainConfig, None, small_run(synthetic_shards, "runs", name="curves", steps=10)))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [5, 10]
    for key in ("loss", "lr", "psd_alpha", "logit_scale", "samples_per_s", "data_wait_fraction", "epoch",
                "samples_seen", "train_samples_per_s"):
        assert all(isinstance(r[key], float | int) for r in rows), key
    assert "acc1" in rows[1] and "acc1" not in rows[0]  # evaluated at the end only
    assert_same_values(run_dir)
    assert (run_dir / "curves.png").is_file()
    # As if an attempt had logged step 15 and died before checkpointing it: the resume recomputes it.
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 15, "loss": 123.0}) + "\n")
    summary = run_pretrain(load_config(PretrainConfig, None,
                                       small_run(synthetic_shards, "runs", name="curves", steps=15)))
    assert summary["step"] == 15
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15]
    assert rows[2]["loss"] != 123.0 and "lr" in rows[2] and "acc1" in rows[2]
    assert rows[2]["loss"] == pytest.approx(summary["loss"])
    assert sorted(tensorboard_scalars(run_dir)["loss"]) == [5, 10, 15]
    assert_same_values(run_dir)
