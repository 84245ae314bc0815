"""EMA weights (`train.ema_decay`) through Ray Train: evaluated beside the raw weights, held in every
checkpoint, continued by a resumed run from the EMA it saved, and exported with `export.weights=ema`.

PSD's EMA teacher runs at the same decay, so the run also exercises the shared copy (one EMA under both
state keys)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from raylpclip.config import PretrainConfig, load_config
from raylpclip.engine.checkpoint_state import check_checkpoint, load_state
from raylpclip.engine.metrics_log import read_metrics
from raylpclip.engine.pretrain_task import EMA_WEIGHTS, TEACHER_EMA
from raylpclip.runtime.train.pretrain_driver import run_pretrain

from .conftest import small_run

pytestmark = pytest.mark.ray
os.environ["HF_HUB_OFFLINE"] = "1"  # the exported model must load from its directory alone

DECAY = 0.9


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    """The run's complete checkpoints by step."""
    found = {}
    for d in run_dir.glob("checkpoint_*"):
        if check_checkpoint(d) is None:
            found[int(json.loads((d / "meta.json").read_text())["step"])] = d
    return found


def _clip_part(tower_state: dict) -> dict:
    """A ClipTower state's CLIPModel weights, named as CLIPModel names them."""
    return {k[len("clip."):]: v for k, v in tower_state.items() if k.startswith("clip.")}


def _assert_exported(model_dir: str, task_state: dict) -> None:
    exported = CLIPModel.from_pretrained(model_dir, local_files_only=True).state_dict()
    ema, raw = _clip_part(task_state[EMA_WEIGHTS]), _clip_part(task_state["model"])
    assert set(exported) == set(ema)
    assert all(torch.equal(exported[k], ema[k]) for k in ema)  # the EMA, bit for bit
    assert not all(torch.equal(exported[k], raw[k]) for k in raw)  # and not the raw weights


def test_ema_weights_are_evaluated_resumed_and_exported(ray_session, synthetic_shards, tmp_path):
    # warmup 2, lr 1e-3: the weights move enough in 10 steps for the EMA to trail them measurably.
    overrides = [f"train.ema_decay={DECAY}", "export.weights=ema", "psd.teacher=ema", f"psd.ema_decay={DECAY}",
                 "optim.warmup_steps=2", "optim.lr=1e-3"]
    first = run_pretrain(load_config(PretrainConfig, None,
                                     small_run(synthetic_shards, tmp_path, name="ema", steps=10) + overrides))
    run_dir = tmp_path / "ema"
    assert first["step"] == 10 and first["exported_weights"] == "ema" and first["ema_decay"] == DECAY
    for key in ("acc1", "acc5", "ema_acc1", "ema_acc5", "ema_mean_per_class_recall"):
        assert 0.0 <= first[key] <= 1.0, key
    final = read_metrics(run_dir)[-1]
    assert final["step"] == 10 and final["ema_acc1"] == pytest.approx(first["ema_acc1"])

    at_10 = load_state(_checkpoints(run_dir)[10])["task"]
    assert all(torch.equal(at_10[TEACHER_EMA][k], v) for k, v in at_10[EMA_WEIGHTS].items())  # one shared copy
    _assert_exported(first["model_dir"], at_10)
    card = (Path(first["model_dir"]) / "README.md").read_text()
    assert f"moving average of the training weights (decay {DECAY:g}, `export.weights=ema`)" in card, card
    assert "| zero-shot top-1 accuracy, EMA weights |" in card, card

    # The same run, one step longer: it resumes from step 10 and its EMA continues the saved one,
    # ema_11 = d * ema_10 + (1 - d) * w_11, not an EMA restarted from the restored raw weights.
    second = run_pretrain(load_config(PretrainConfig, None,
                                      small_run(synthetic_shards, tmp_path, name="ema", steps=11) + overrides))
    assert second["step"] == 11 and "ema_acc1" in second
    at_11 = load_state(_checkpoints(run_dir)[11])["task"]
    for k, ema_10 in at_10[EMA_WEIGHTS].items():
        if not ema_10.is_floating_point():
            continue
        raw_11 = at_11["model"][k]
        torch.testing.assert_close(at_11[EMA_WEIGHTS][k], torch.lerp(ema_10, raw_11, 1 - DECAY), rtol=0, atol=1e-6,
                                   msg=k)
    # The check can tell: an EMA restarted at resume would sit this far from the continued one.
    restarted = max((torch.lerp(at_10["model"][k], at_11["model"][k], 1 - DECAY) - at_11[EMA_WEIGHTS][k]).abs().max()
                    for k in at_11["model"] if at_11["model"][k].is_floating_point())
    assert restarted > 1e-4, restarted
    _assert_exported(second["model_dir"], at_11)
