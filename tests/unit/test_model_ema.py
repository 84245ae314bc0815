"""EMA weights (`train.ema_decay`): the update against a hand computation, a resumed run continuing the same
EMA, the EMA export reloading bit-identical, PSD's EMA teacher sharing the copy at the same decay, and the
config checks. No Ray: the task, loop and checkpoint files the Train workers use, driven directly."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # the export must load from its directory alone

from transformers import CLIPModel

from raylpclip.commands.finetune import FinetuneConfig
from raylpclip.config import ConfigError, ModelConfig, PretrainConfig, load_config, save_config
from raylpclip.engine.checkpoint_state import STATE_FILE, CheckpointError, load_state, save_state
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.model_export import export_checkpoint_model
from raylpclip.engine.pretrain_task import EMA_WEIGHTS, TEACHER_EMA
from raylpclip.engine.training_setup import build_training
from raylpclip.models.classifier import load_encoder
from raylpclip.models.ema import ModelEMA
from raylpclip.models.model_card import model_card

TINY = {"vision.image_size": 16, "vision.patch_size": 8, "vision.num_hidden_layers": 1, "text.num_hidden_layers": 1,
        "vision.hidden_size": 32, "text.hidden_size": 32, "vision.intermediate_size": 64,
        "text.intermediate_size": 64, "projection_dim": 16, "text.max_position_embeddings": 8}
STEPS, BATCH = 4, 8


class _Quiet:
    def report(self, state, metrics, *, save, evaluate, final):
        pass


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    return train_tokenizer(["a red circle", "a blue square", "a green triangle"] * 10, vocab_size=300,
                           out_dir=str(tokenizer_dir))


def _cfg(*overrides: str) -> PretrainConfig:
    # lr 1e-2 without warmup: every step moves the weights far enough for the EMA to differ visibly.
    return load_config(PretrainConfig, None, [f"train.steps={STEPS}", f"train.batch_size={BATCH}", "train.num_workers=1",
                                              "optim.lr=0.01", "optim.warmup_steps=0", *overrides])


def _batches(tokenizer, n: int = STEPS):
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(tokenizer(["a red circle", "a blue square"] * (BATCH // 2), padding="max_length",
                                 max_length=8)["input_ids"])
    return [{"image": torch.randint(0, 255, (BATCH, 3, 16, 16), dtype=torch.uint8, generator=g), "input_ids": ids,
             "attention_mask": torch.ones_like(ids)} for _ in range(n)]


def _build(cfg: PretrainConfig, tokenizer):
    cfg = dataclasses.replace(cfg, model=ModelConfig(overrides=TINY))
    return build_training(cfg, tokenizer=tokenizer, rank=0, device=torch.device("cpu"))


def _train(t, cfg, batches, *, state: LoopState, until: int) -> LoopState:
    return run_loop(t.task, optimizer=t.optimizer, scheduler=t.scheduler, batches=iter(batches), state=state,
                    train=dataclasses.replace(cfg.train, steps=until), optim=cfg.optim, hooks=_Quiet())


def _save(t, directory, state: LoopState) -> None:
    """What runtime/train/worker_checkpoint.save_run_state writes."""
    save_state(directory, state={"task": t.task.state_dict(), "optimizer": t.optimizer.state_dict(),
                                 "scheduler": t.scheduler.state_dict(), "step": state.step,
                                 "samples_seen": state.samples_seen}, meta={"step": state.step})


def test_update_matches_a_hand_computation_over_three_steps():
    # Dyadic numbers: w <- 0.5 w + 0.5 w_model is exact in float32.
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.5)
    got = []
    for w in (2.0, 4.0, 8.0):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
        got.append(ema.module.weight.item())
    assert got == [1.5, 2.75, 5.375]


def test_training_updates_the_ema_after_every_optimizer_step(tokenizer):
    """Three real steps of the tiny tower: after step k the EMA is d * ema_{k-1} + (1 - d) * w_k, computed by
    hand in float64 from snapshots of the raw weights."""
    cfg, decay = _cfg("train.ema_decay=0.9"), 0.9
    t = _build(cfg, tokenizer)
    start = {k: v.double().clone() for k, v in t.model.state_dict().items()}
    snapshots = []
    after_step = t.task.after_step

    def snapshot_then_update():
        snapshots.append({k: v.double().clone() for k, v in t.model.state_dict().items()})
        after_step()

    t.task.after_step = snapshot_then_update
    _train(t, cfg, _batches(tokenizer, 3), state=LoopState(), until=3)
    hand = start
    for raw in snapshots:
        hand = {k: decay * hand[k] + (1 - decay) * raw[k] if raw[k].is_floating_point() else raw[k] for k in raw}
    ema = t.task.weights_ema.module.state_dict()
    worst = max((ema[k].double() - hand[k]).abs().max().item() for k in hand)
    moved = max((ema[k].double() - snapshots[-1][k]).abs().max().item() for k in hand)
    assert len(snapshots) == 3 and worst < 1e-6, worst
    assert moved > 1e-3, moved  # the EMA trails the raw weights: not a copy of them


@pytest.mark.parametrize("teacher", ["self", "ema-same-decay", "ema-other-decay"])
def test_a_resumed_run_continues_the_same_ema(tokenizer, tmp_path, teacher):
    extra = {"self": [], "ema-same-decay": ["psd.teacher=ema", "psd.ema_decay=0.8"],
             "ema-other-decay": ["psd.teacher=ema", "psd.ema_decay=0.5"]}[teacher]
    cfg, batches = _cfg("train.ema_decay=0.8", *extra), _batches(tokenizer)
    whole = _build(cfg, tokenizer)
    _train(whole, cfg, batches, state=LoopState(), until=STEPS)

    first = _build(cfg, tokenizer)
    state = _train(first, cfg, batches[:2], state=LoopState(), until=2)
    _save(first, tmp_path, state)
    del first
    second = _build(cfg, tokenizer)  # a new worker: fresh model, EMA copies of its initial weights
    saved = load_state(tmp_path)
    second.task.load_state_dict(saved["task"])
    second.optimizer.load_state_dict(saved["optimizer"])
    second.scheduler.load_state_dict(saved["scheduler"])
    _train(second, cfg, batches[2:], state=LoopState(step=saved["step"], samples_seen=saved["samples_seen"]), until=STEPS)

    a, b = whole.task.state_dict(), second.task.state_dict()
    keys = [EMA_WEIGHTS, "model"] + ([TEACHER_EMA] if teacher != "self" else [])
    assert sorted(a) == sorted(b) == sorted(keys + ["generator"])
    for key in keys:
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    shared = second.task.weights_ema is second.task.ema
    assert shared == (teacher == "ema-same-decay")


def test_a_shared_teacher_costs_no_second_copy_on_disk(tokenizer, tmp_path):
    sizes = {}
    for name, extra in (("plain", []), ("shared", ["psd.ema_decay=0.8"]), ("two", ["psd.ema_decay=0.5"])):
        t = _build(_cfg("train.ema_decay=0.8", "psd.teacher=ema", *extra) if extra else _cfg(), tokenizer)
        _save(t, tmp_path / name, LoopState())
        sizes[name] = (tmp_path / name / STATE_FILE).stat().st_size
    # model + optimizer (empty before a step) + EMA copies: the shared copy is stored once.
    assert sizes["shared"] < 1.1 * 2 * sizes["plain"] < sizes["two"], sizes


def test_a_checkpoint_without_ema_starts_it_at_the_restored_weights(tokenizer, tmp_path):
    cfg = _cfg()
    t = _build(cfg, tokenizer)
    _train(t, cfg, _batches(tokenizer, 2), state=LoopState(), until=2)
    _save(t, tmp_path, LoopState(step=2))
    resumed = _build(_cfg("train.ema_decay=0.9"), tokenizer)
    resumed.task.load_state_dict(load_state(tmp_path)["task"])
    ema, raw = resumed.task.weights_ema.module.state_dict(), t.model.state_dict()
    assert all(torch.equal(ema[k], raw[k]) for k in raw)


def test_export_writes_the_ema_weights_and_they_reload_bit_identical(tokenizer, tokenizer_dir, tmp_path):
    cfg = _cfg("train.ema_decay=0.9", "export.weights=ema", f"output_dir={tmp_path}", "name=run",
               f"model.tokenizer={tokenizer_dir}")
    t = _build(cfg, tokenizer)
    _train(t, cfg, _batches(tokenizer, 3), state=LoopState(), until=3)
    ckpt = tmp_path / "run" / "checkpoint_000000"
    _save(t, ckpt, LoopState(step=3))
    ema_clip, raw_clip = t.task.weights_ema.module.clip.state_dict(), t.model.clip.state_dict()
    built = dataclasses.replace(cfg, model=ModelConfig(overrides=TINY, tokenizer=cfg.model.tokenizer))

    out = export_checkpoint_model(built, ckpt, tokenizer=tokenizer, out_dir=tmp_path / "ema")
    reloaded = CLIPModel.from_pretrained(out).state_dict()
    assert set(reloaded) == set(ema_clip)
    assert all(torch.equal(reloaded[k], ema_clip[k]) for k in ema_clip)
    assert not all(torch.equal(reloaded[k], raw_clip[k]) for k in raw_clip)
    raw_out = export_checkpoint_model(dataclasses.replace(built, export=dataclasses.replace(built.export, weights="raw")),
                                      ckpt, tokenizer=tokenizer, out_dir=tmp_path / "raw")
    raw = CLIPModel.from_pretrained(raw_out).state_dict()
    assert all(torch.equal(raw[k], raw_clip[k]) for k in raw_clip)

    # A checkpoint directory given to probe/finetune/eval loads the weights its run exports.
    save_config(built, tmp_path / "run" / "config.yaml")
    tower, _ = load_encoder(ckpt)
    assert all(torch.equal(tower.clip.state_dict()[k], ema_clip[k]) for k in ema_clip)

    # Without EMA weights in the checkpoint, export.weights=ema says what is missing.
    plain = tmp_path / "plain"
    save_state(plain, state={"task": {"model": t.model.state_dict()}}, meta={})
    with pytest.raises(CheckpointError, match="export.weights=ema: the checkpoint holds no EMA weights"):
        export_checkpoint_model(built, plain, tokenizer=tokenizer, out_dir=tmp_path / "none")


def test_model_card_says_which_weights_it_holds():
    config = {"vision_config": {"image_size": 16, "patch_size": 8, "num_hidden_layers": 1, "hidden_size": 32,
                                "num_attention_heads": 2, "intermediate_size": 64},
              "text_config": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                              "intermediate_size": 64, "max_position_embeddings": 8, "vocab_size": 300},
              "projection_dim": 16}
    summary = {"acc1": 0.5, "acc5": 0.9, "ema_acc1": 0.625, "ema_acc5": 0.875, "chance_acc1": 0.25}
    cards = {w: model_card(_cfg("train.ema_decay=0.99", f"export.weights={w}", "data.eval=/e"), summary=summary,
                           config=config, params=None, shards={}, formats={}, classnames=["a", "b", "c", "d"])
             for w in ("raw", "ema")}
    assert "moving average of the training weights (decay 0.99, `export.weights=ema`)" in cards["ema"]
    assert "last step's raw weights (`export.weights=raw`)" in cards["raw"]
    assert "| zero-shot top-1 accuracy, EMA weights | 0.625 |" in cards["ema"]


@pytest.mark.parametrize("override, key, message", [
    ("train.ema_decay=1.0", "train.ema_decay", "expected in [0, 1)"),
    ("train.ema_decay=-0.1", "train.ema_decay", "expected in [0, 1)"),
    ("export.weights=best", "export.weights", "expected one of ['raw', 'ema']"),
    ("export.weights=ema", "export.weights", "set train.ema_decay > 0"),
])
def test_config_checks_name_the_key(override, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, [override])
    assert f"config key '{key}'" in str(err.value) and message in str(err.value)


def test_config_accepts_decays_in_range_and_finetuning_refuses_one():
    assert load_config(PretrainConfig, None, ["train.ema_decay=0"]).train.ema_decay == 0
    cfg = load_config(PretrainConfig, None, ["train.ema_decay=0.9999", "export.weights=ema"])
    assert (cfg.train.ema_decay, cfg.export.weights) == (0.9999, "ema")
    assert PretrainConfig().train.ema_decay == 0 and PretrainConfig().export.weights == "raw"  # off by default
    with pytest.raises(ConfigError, match="config key 'train.ema_decay'.*fine-tuning"):
        load_config(FinetuneConfig, None, ["train.ema_decay=0.9"])
