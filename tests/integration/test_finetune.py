"""`raylpclip finetune` end to end on the shared local Ray instance: CAR-FT on 2 workers over labelled
synthetic shards mixed with caption-only ones (skipped and counted), classifier directories that load
back, WiSE-FT mixtures that are what they claim, and a re-run that resumes instead of retraining."""

from __future__ import annotations

import json

import pytest
import torch

from raylpclip.cli import main
from raylpclip.engine.checkpoint import load_state
from raylpclip.methods.finetune_config import load_finetune_config
from raylpclip.models.classifier import load_classifier, load_encoder

pytestmark = pytest.mark.ray

STEPS = 4


def _overrides(shards, tiny_clip_dir, out) -> list[str]:
    return [
        f"model={tiny_clip_dir}", f"output_dir={out}", "name=ft", "method=carft", "carft.kl_weight=2.0",
        f"data.sources=[{{path: '{shards['webdataset']}', weight: 0.75}}, {{path: '{shards['captions']}', weight: 0.25}}]",
        f"data.eval={shards['eval']}", "data.image_size=32", "data.eval_max_samples=200", "data.decode_batch_size=100",
        "carft.templates=['a photo of a {}.', 'a blurry sketch of a {}.', 'a {} in the dark.']",
        f"train.steps={STEPS}", "train.batch_size=16", "train.checkpoint_every=2", "train.eval_every=2",
        "train.log_every=1", "optim.lr=1e-3", "optim.warmup_steps=0", "wise_alphas=[0.5]",
    ]


def _encoder_state(path) -> dict[str, torch.Tensor]:
    tower, _ = load_encoder(path)
    return {k: v.clone() for k, v in tower.clip.vision_model.state_dict().items()}


def test_carft_run_writes_loadable_classifiers_and_resumes(ray_session, synthetic_shards, tiny_clip_dir, tmp_path,
                                                           classnames, capsys):
    overrides = _overrides(synthetic_shards, tiny_clip_dir, tmp_path)
    assert main(["finetune", *overrides]) == 0
    out = capsys.readouterr().out
    summary_path = tmp_path / "ft" / "summary.json"
    assert out.strip().splitlines()[-1] == str(summary_path.resolve())  # the summary's path, last
    summary = json.loads(summary_path.read_text())
    assert (summary["step"], summary["samples_seen"], summary["method"]) == (STEPS, STEPS * 16, "carft")
    assert summary["skipped"].get("no_label", 0) > 0  # the caption-only source's rows were dropped and counted
    assert set(summary["classifiers"]) == {"zeroshot", "carft", "wise-carft-0.5"}
    assert "eval acc1" in out and " kl " in out  # worker progress: mid-run eval, the context KL

    loaded = {name: load_classifier(path) for name, path in summary["classifiers"].items()}
    assert [loaded[n].kind for n in ("zeroshot", "carft", "wise-carft-0.5")] == ["zeroshot", "carft", "wise-ft"]
    assert all(c.classnames == classnames for c in loaded.values())
    assert loaded["zeroshot"].encoder == str(tiny_clip_dir.resolve())  # the origin is referenced, not copied
    assert loaded["wise-carft-0.5"].info["alpha"] == 0.5 and loaded["carft"].info["kl_weight"] == 2.0
    for name in loaded:
        m = summary["id"][name]
        assert 0.0 <= m["acc1"] <= m["acc5"] <= 1.0 and m["eval_samples"] == 200 and m["ece"] >= 0
        assert summary[f"{name}_acc1"] == m["acc1"]

    # The fine-tuned directory holds exactly the checkpoint's weights; WiSE-FT at 0.5 is the midpoint.
    theta_ft = load_state(summary["checkpoint"])["task"]["model"]
    ft, origin, wise = (_encoder_state(loaded[n].encoder) for n in ("carft", "zeroshot", "wise-carft-0.5"))
    moved = 0
    for key, value in ft.items():
        assert torch.equal(value, theta_ft[f"encoder.vision.{key}"]), key
        torch.testing.assert_close(wise[key], (origin[key] + value) / 2)
        moved += not torch.equal(value, origin[key])
    assert moved > 10
    assert torch.equal(loaded["carft"].head.weight, theta_ft["head.weight"])
    torch.testing.assert_close(loaded["wise-carft-0.5"].head.weight,
                               (loaded["zeroshot"].head.weight + theta_ft["head.weight"]) / 2)

    # Same name again: Ray Train hands back the finished run's checkpoint, nothing retrains.
    from raylpclip.runtime.finetune import run_finetune

    again = run_finetune(load_finetune_config(None, overrides))
    assert again["step"] == STEPS and again["checkpoint"] == summary["checkpoint"]
    assert again["id"]["carft"]["acc1"] == summary["id"]["carft"]["acc1"]


def test_caption_only_shards_are_refused_before_ray_work(synthetic_shards, tiny_clip_dir, tmp_path, capsys):
    code = main(["finetune", f"model={tiny_clip_dir}", f"output_dir={tmp_path}", "data.image_size=32",
                 f"data.train={synthetic_shards['captions']}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "carry no class labels" in err and str(synthetic_shards["captions"]) in err


def test_image_size_must_match_the_model(synthetic_shards, tiny_clip_dir, tmp_path, capsys):
    code = main(["finetune", f"model={tiny_clip_dir}", f"output_dir={tmp_path}", "data.image_size=64",
                 f"data.train={synthetic_shards['webdataset']}"])
    assert code == 2 and "'data.image_size': got 64 but the model" in capsys.readouterr().err
