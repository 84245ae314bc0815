"""Two fsdp workers pretraining through the command line (`raylpclip pretrain ... train.parallelism=fsdp`), on
the shared Ray instance: sharded checkpoints merged by Ray Train from both workers, evaluation on the gathered
weights, an export that computes what the checkpoint computes, and the same command again restoring the
sharded checkpoint in both workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from raylpclip.cli import main
from raylpclip.config import PretrainConfig, load_config
from raylpclip.data.tokenization import tokenize
from raylpclip.engine.checkpoint_state import load_state
from raylpclip.models.bpe_tokenizer import load_tokenizer
from raylpclip.models.clip import ClipTower
from raylpclip.models.tower_factory import build_tower

from .conftest import small_run

pytestmark = pytest.mark.ray
os.environ["HF_HUB_OFFLINE"] = "1"


def test_two_fsdp_workers_pretrain_checkpoint_export_and_restore(ray_session, synthetic_shards, tmp_path, capsys):
    overrides = small_run(synthetic_shards, tmp_path, name="fsdp", steps=20) + [
        "train.parallelism=fsdp", "train.ema_decay=0.9", "psd.teacher=ema"]
    assert main(["pretrain", *overrides]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "fsdp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 20 and 0.0 <= summary["acc1"] <= 1.0 and "ema_acc1" in summary
    checkpoints = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
    assert checkpoints, out
    for ckpt in checkpoints:  # both workers' shards in every checkpoint, each rank's manifest beside them
        names = set(os.listdir(ckpt))
        assert {".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json", "manifest.rank1.json"} <= names, names
        assert json.loads((ckpt / "meta.json").read_text())["parallelism"] == "fsdp"

    cfg = load_config(PretrainConfig, None, overrides)
    tokenizer = load_tokenizer(summary["model_dir"])
    reference = build_tower(cfg.model, tokenizer=tokenizer, loss=cfg.loss)
    reference.load_state_dict(load_state(summary["checkpoint"])["task"]["model"])  # the shards, whole
    exported = ClipTower(CLIPModel.from_pretrained(summary["model_dir"], local_files_only=True))
    tokens = tokenize(tokenizer, ["a small red circle", "a blue star"], context_length=cfg.data.context_length)
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    with torch.no_grad():
        assert torch.allclose(reference.encode_text(ids, mask), exported.encode_text(ids, mask), atol=1e-6)

    # The same command again: both workers restore the sharded checkpoint of step 20; nothing is left to train.
    assert main(["pretrain", *overrides]) == 0
    again = capsys.readouterr().out
    assert "had finished at step 20" in again, again[-2000:]
    assert json.loads((run / "summary.json").read_text())["step"] == 20
    assert Path(summary["checkpoint"]).is_dir()
