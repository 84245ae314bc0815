"""`raylpclip bench train bench.patch_dropout=P`, Ray-free: the plain loop's extra arm and the vision tower
timed alone (bench/vision_timing.py), the summary's speed-ups from hand-made rounds, and the key's check."""

from __future__ import annotations

import pytest
import torch

from raylpclip.bench.train_bench_config import TrainBenchConfig, check
from raylpclip.bench.train_bench_report import format_table, summarize
from raylpclip.bench.train_timing import arm_configs, in_memory_windows
from raylpclip.config import ConfigError, ModelConfig, PretrainConfig, TrainConfig, load_config

TINY = ModelConfig(overrides={"vision.image_size": 32, "vision.patch_size": 4, "vision.num_hidden_layers": 1,
                              "text.num_hidden_layers": 1, "vision.hidden_size": 32, "text.hidden_size": 32,
                              "vision.intermediate_size": 64, "text.intermediate_size": 64, "projection_dim": 16,
                              "text.max_position_embeddings": 8})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    return train_tokenizer(["a red circle", "a blue square", "a green triangle"] * 10, vocab_size=300,
                           out_dir=str(tmp_path_factory.mktemp("tok")))


def _batches(tokenizer, n, b):
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(tokenizer(["a red circle"] * b, padding="max_length", max_length=8)["input_ids"])
    return [{"image": torch.randint(0, 255, (b, 3, 32, 32), dtype=torch.uint8, generator=g), "input_ids": ids,
             "attention_mask": torch.ones_like(ids)} for _ in range(n)]


def test_the_patch_dropout_arm_is_the_psd_arm_at_that_dropout():
    arms = arm_configs(PretrainConfig(), patch_dropout=0.5)
    assert list(arms) == ["psd", "clip", "patch_dropout"]
    assert arms["patch_dropout"].model.patch_dropout == 0.5 and arms["psd"].model.patch_dropout == 0.0
    assert arms["patch_dropout"].psd == arms["psd"].psd
    assert list(arm_configs(PretrainConfig())) == ["psd", "clip"]  # off by default


def test_plain_loop_times_the_patch_dropout_arm_and_the_vision_tower(tokenizer):
    cfg = PretrainConfig(model=TINY, train=TrainConfig(batch_size=8, num_workers=1))
    out = in_memory_windows(cfg, tokenizer=tokenizer, batches=_batches(tokenizer, 2, 8), threads=1,
                            warmup_steps=1, windows=1, window_steps=3, patch_dropout=0.5)
    assert len(out["patch_dropout"]) == 1 and out["patch_dropout"][0]["steps"] == 2
    vision = out["vision"]
    assert vision["base"] > 0 and vision["patch_dropout"] > 0 and (vision["p"], vision["base_p"]) == (0.5, 0.0)
    print(f"tiny, 1 thread: vision forward+backward {vision['base'] * 1e3:.1f} ms at 0, "
          f"{vision['patch_dropout'] * 1e3:.1f} ms at 0.5")


def _window(step_time, steps=5):
    return {"steps": steps, "seconds": step_time * steps, "data_wait_fraction": 0.0}


def _rank(rate):
    return {"timed": {"samples_per_s": rate, "data_wait_fraction": 0.0}, "peak_memory_mb": {"rss_mb": 900.0},
            "report_s": {}}


def _round(psd_step, drop_step, vision_base, vision_drop):
    return {"load": 1.0, "one": [_rank(100.0)], "two": None,
            "limit": {"psd": [_window(psd_step)], "clip": [_window(psd_step)], "patch_dropout": [_window(drop_step)],
                      "vision": {"base": vision_base, "patch_dropout": vision_drop, "p": 0.5, "base_p": 0.0},
                      "loss": {"psd_loss_s": 0.003, "clip_loss_s": 0.001, "extra_s": 0.002},
                      "peak_memory_mb": {"rss_mb": 700.0}}}


def test_summary_reports_the_step_and_vision_speedups():
    rounds = [_round(0.50, 0.30, 0.30, 0.14), _round(0.40, 0.26, 0.26, 0.14)]
    s = summarize(rounds, batch=64, threads=2, saves=[], use_gpu=False)
    # Pooled windows: PSD 0.45 s, patch dropout 0.28 s; the tower alone: medians 0.28 and 0.14 s.
    assert s["patch_dropout"] == 0.5 and s["patch_dropout_step_time_s"] == pytest.approx(0.28)
    assert s["patch_dropout_step_ratio"] == pytest.approx(0.45 / 0.28)
    assert s["patch_dropout_vision_ratio"] == pytest.approx(2.0) and s["vision_share"] == pytest.approx(0.28 / 0.45)
    table = format_table(s)
    assert "patch dropout 0.5" in table and "1.61x as fast" in table and "2.00x" in table
    assert "patch_dropout" not in summarize([{k: v for k, v in rounds[0].items()}
                                             | {"limit": {k: v for k, v in rounds[0]["limit"].items()
                                                          if k not in ("patch_dropout", "vision")}}],
                                            batch=64, threads=2, saves=[], use_gpu=False)


def test_bad_bench_patch_dropout_names_the_key():
    with pytest.raises(ConfigError, match="'bench.patch_dropout'"):
        check(load_config(TrainBenchConfig, None, ["bench.patch_dropout=0.95", "bench.threads=2"]))
