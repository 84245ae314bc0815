"""Classifier directories: encoders from every kind of local path, zero-shot heads, save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch

from raylpclip.config import PretrainConfig, save_config
from raylpclip.engine.checkpoint_state import save_state
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.models.classifier import context_length, load_classifier, load_encoder, save_classifier, zeroshot_head
from raylpclip.models.clip import export_clip
from tests.conftest import TINY_CLASSES

TEMPLATES = ["a photo of a {}.", "a blurry sketch of a {}."]


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_zeroshot_head_is_scaled_classifier(tiny_clip_dir):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, TEMPLATES, logit_scale=10.0)
    weights = zeroshot_classifier(tower, tokenizer, TINY_CLASSES, TEMPLATES, context_length=context_length(tower))
    torch.testing.assert_close(head.weight, 10.0 * weights)
    assert torch.equal(head.bias, torch.zeros(len(TINY_CLASSES)))
    with torch.no_grad():
        feats = tower.encode_image(_images())
        torch.testing.assert_close(head(feats), 10.0 * feats @ weights.T)
    default = zeroshot_head(tower, tokenizer, TINY_CLASSES, TEMPLATES)  # the model's own logit scale
    torch.testing.assert_close(default.weight, float(tower.logit_scale().detach()) * weights)


def test_probe_classifier_round_trip_references_encoder(tiny_clip_dir, tmp_path):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, TEMPLATES)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = save_classifier(tmp_path / "probe", head=head, classnames=TINY_CLASSES, kind="lpclip",
                          encoder=tiny_clip_dir, info={"round": 2})
    assert not (out / "config.json").exists()  # the frozen encoder is referenced, not copied
    loaded = load_classifier(out)
    assert (loaded.kind, loaded.classnames, loaded.info) == ("lpclip", TINY_CLASSES, {"round": 2})
    assert loaded.encoder == str(tiny_clip_dir.resolve())
    assert torch.equal(loaded.head.weight, head.weight) and torch.equal(loaded.head.bias, head.bias)


def test_finetuned_classifier_holds_its_model(tiny_clip_dir, tmp_path):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    with torch.no_grad():
        tower.clip.visual_projection.weight.mul_(2.0)  # a "fine-tuned" encoder differs from the original
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, TEMPLATES)
    out = save_classifier(tmp_path / "ft", head=head, classnames=TINY_CLASSES, kind="ft", model=tower,
                          tokenizer=tokenizer)
    loaded = load_classifier(out)
    assert loaded.encoder == str(out.resolve())
    reloaded, _ = load_encoder(loaded.encoder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(_images()), tower.encode_image(_images()))


def test_save_classifier_needs_exactly_one_encoder(tiny_clip_dir, tmp_path):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="exactly one"):
        save_classifier(tmp_path / "x", head=head, classnames=TINY_CLASSES, kind="ft")


def test_class_count_mismatch_is_refused(tiny_clip_dir, tmp_path):
    tower, tokenizer = load_encoder(tiny_clip_dir)
    head = zeroshot_head(tower, tokenizer, TINY_CLASSES, TEMPLATES)
    out = save_classifier(tmp_path / "c", head=head, classnames=TINY_CLASSES, kind="zeroshot", encoder=tiny_clip_dir)
    meta = json.loads((out / "classifier.json").read_text())
    meta["classnames"] = meta["classnames"][:2]
    (out / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="3 classes but classifier.json names 2"):
        load_classifier(out)


def _run_dir(tmp_path, tiny_clip_dir):
    """A run directory laid out as `raylpclip pretrain` leaves it: config.yaml, tokenizer/, model/ and a
    checkpoint whose state.pt holds the task state (weights perturbed so the two are not trivially equal)."""
    tower, tokenizer = load_encoder(tiny_clip_dir)
    run = tmp_path / "run"
    cfg = PretrainConfig(name="run", output_dir=str(tmp_path))
    cfg.model.overrides = {"vision.image_size": 32, "vision.patch_size": 8, "vision.num_hidden_layers": 1,
                           "text.num_hidden_layers": 1}
    save_config(cfg, run / "config.yaml")
    tokenizer.save_pretrained(str(run / "tokenizer"))
    with torch.no_grad():
        tower.clip.visual_projection.weight.add_(0.01)
    save_state(run / "checkpoint_000001", state={"task": {"model": tower.state_dict()}}, meta={"step": 1})
    export_clip(tower.clip, str(run / "model"), tokenizer=tokenizer)
    return run, run / "checkpoint_000001"


def test_load_encoder_from_run_and_checkpoint_dirs(tmp_path, tiny_clip_dir):
    """A run directory loads its exported model; a checkpoint directory rebuilds the same weights."""
    run, checkpoint = _run_dir(tmp_path, tiny_clip_dir)
    exported, _ = load_encoder(run)
    rebuilt, _ = load_encoder(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_image(_images()), exported.encode_image(_images()))


def test_load_encoder_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a save_pretrained directory"):
        load_encoder(tmp_path)
