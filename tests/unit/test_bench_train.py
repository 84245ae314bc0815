"""The train benchmark's arithmetic and its Ray-free parts: slope-timed windows, pooling, the clock's
pass-through of the real hooks, the summary's ratios from hand-made rounds, config limits, and the
plain loop on a tiny model."""

from __future__ import annotations

import pytest
import torch

from raylpclip.bench.train_bench_config import TrainBenchConfig, check, pretrain_part, run_steps, save_steps
from raylpclip.bench.train_bench_data import lookahead_samples, needed_samples
from raylpclip.bench.train_bench_report import format_table, summarize
from raylpclip.bench.train_timing import arm_configs, in_memory_windows, loss_overhead, pooled
from raylpclip.config import ConfigError, ModelConfig, PretrainConfig, PSDConfig, TrainConfig, load_config
from raylpclip.engine.clock import StepClock, StepRecord, clocked, slope_per_s, window_stats
from raylpclip.engine.loop import LoopState


def _records(ends, *, wall=0.5, wait=0.1):
    return [StepRecord(step=i, end=t, wall=wall, wait=wait) for i, t in enumerate(ends)]


def test_slope_is_least_squares_not_end_points():
    # times 0, 1, 3; counts 0, 10, 20: mean t 4/3, mean c 10, cov 30, var 14/3 -> slope 90/14.
    assert slope_per_s([0, 1, 3], [0, 10, 20]) == pytest.approx(90 / 14)
    assert slope_per_s([5.0], [0]) == 0.0 and slope_per_s([2.0, 2.0], [0, 10]) == 0.0


def test_window_stats_anchor_at_the_step_before_the_window():
    # Steps 0..5 end at 0, 10, 11, 12, 13, 20 s. Window 2..4: anchor step 1 (t=10), slope 8 samples/s.
    recs = _records([0, 10, 11, 12, 13, 20], wall=0.9, wait=0.25)
    w = window_stats(recs, first=2, last=4, batch=8)
    assert w["samples_per_s"] == pytest.approx(8.0) and w["step_time_s"] == pytest.approx(1.0)
    assert w["steps"] == 3 and w["seconds"] == pytest.approx(3.0)
    assert w["data_wait_fraction"] == pytest.approx(3 * 0.25 / 3.0)  # the anchor's wait is not counted
    assert w["loop_step_time_s"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="missing \\[6"):
        window_stats(recs, first=4, last=6, batch=8)


def test_pooled_weights_windows_by_length():
    p = pooled([{"steps": 2, "seconds": 1.0, "data_wait_fraction": 0.1},
                {"steps": 3, "seconds": 3.0, "data_wait_fraction": 0.2}])
    assert p["step_time_s"] == pytest.approx(4.0 / 5) and p["steps"] == 5
    assert p["data_wait_fraction"] == pytest.approx((0.1 * 1 + 0.2 * 3) / 4)


class Inner:
    def __init__(self):
        self.calls = []

    def report(self, state, metrics, *, save, evaluate, final):
        self.calls.append((state.step, save, evaluate, final, "bench" in metrics))


def test_clock_records_every_step_and_forwards_at_the_real_cadence():
    inner = Inner()
    clock = StepClock(inner=inner, log_every=3, save_steps=frozenset({5}), final_step=7,
                      extra_final=lambda: {"bench": [1]})
    for step in range(1, 8):
        clock.report(LoopState(step=step), {"step_time_s": 0.5, "data_wait_fraction": 0.2},
                     save=False, evaluate=step == 7, final=step == 7)
    assert [r.step for r in clock.records] == list(range(1, 8))
    assert clock.records[0].wall == 0.5 and clock.records[0].wait == pytest.approx(0.1)
    # step 3 and 6 (log), 5 (save), 7 (final: saved, the bench figures merged in); never an evaluation.
    assert inner.calls == [(3, False, False, False, False), (5, True, False, False, False),
                           (6, False, False, False, False), (7, True, False, True, True)]
    assert set(clock.report_s) == {3, 5, 6, 7} and len(clock.load) == 2


def _rank(rate, *, wait=0.02, rss=900.0, report_s=None):
    return {"timed": {"samples_per_s": rate, "data_wait_fraction": wait}, "peak_memory_mb": {"rss_mb": rss},
            "report_s": report_s or {}}


def _window(step_time, steps=5):
    return {"steps": steps, "seconds": step_time * steps, "data_wait_fraction": 0.0}


def _round(limit_step, clip_step, one, two, load):
    return {"load": load, "limit": {"psd": [_window(limit_step)], "clip": [_window(clip_step)],
                                    "loss": {"psd_loss_s": 0.003, "clip_loss_s": 0.001, "extra_s": 0.002},
                                    "peak_memory_mb": {"rss_mb": 700.0}},
            "one": one, "two": two}


def test_summary_ratios_from_the_best_round_of_each():
    rounds = [
        _round(0.50, 0.49, [_rank(230.0, wait=0.04, report_s={"10": 0.01, "27": 0.30})],
               [_rank(200.0), _rank(199.0, rss=800.0)], load=3.0),
        _round(0.40, 0.39, [_rank(240.0, wait=0.01, rss=950.0, report_s={"10": 0.02, "20": 0.04, "27": 0.20})],
               [_rank(216.0), _rank(215.0)], load=1.0),
    ]
    s = summarize(rounds, batch=128, threads=2, saves=[27], use_gpu=False)
    assert s["compute_limit_samples_per_s"] == pytest.approx(128 / 0.40)  # round 2's limit
    assert s["samples_per_s"] == 240.0 and s["ratio_vs_compute_limit"] == pytest.approx(240 / 320)
    assert s["ratio_vs_compute_limit_per_round"] == pytest.approx([230 / 256, 240 / 320])
    assert s["data_wait_fraction"] == 0.01  # of the best 1-worker round
    # PSD over CLIP from all windows pooled: (0.45 - 0.44) / 0.45; the loss alone 2 ms of 0.45 s.
    assert s["psd_overhead"] == pytest.approx(0.01 / 0.45) and s["psd_loss_overhead"] == pytest.approx(0.002 / 0.45)
    assert s["two_worker_ratio"] == pytest.approx(216 / 240) and s["two_worker_samples_per_s"] == 216.0
    assert s["step_time_s"] == pytest.approx(128 / 240) and s["two_worker_step_time_s"] == pytest.approx(128 / 216)
    assert s["peak_memory_mb"] == 950.0
    assert s["peak_memory_mb_per_worker"] == {"compute_limit": 700.0, "one_worker": [950.0], "two_workers": [900.0, 900.0]}
    assert s["checkpoint_report_s"] == pytest.approx(0.20) and s["plain_report_s"] == pytest.approx(0.03)
    assert s["rounds"]["load_avg"] == [3.0, 1.0]
    table = format_table(s)
    assert "0.75" in table and "two_worker_ratio 0.90" in table and "3.0, 1.0" in table


def test_two_worker_ratio_is_per_gpu_on_gpus():
    r = [_round(0.5, 0.5, [_rank(100.0)], [_rank(180.0), _rank(180.0)], load=0.0)]
    assert summarize(r, batch=64, threads=8, saves=[], use_gpu=True)["two_worker_ratio"] == pytest.approx(0.9)


def test_fsdp_figures_compare_the_two_worker_runs_of_each_round():
    def ranks(rate, rss, state):
        return [dict(_rank(rate, rss=rss), state_bytes=state), dict(_rank(rate, rss=rss - 10), state_bytes=state)]

    r = [dict(_round(0.5, 0.5, [_rank(100.0)], ranks(90.0, 1000.0, 400 * 2**20), load=0.0),
              two_fsdp=ranks(81.0, 700.0, 201 * 2**20)),
         dict(_round(0.5, 0.5, [_rank(100.0)], ranks(80.0, 1010.0, 400 * 2**20), load=0.0),
              two_fsdp=ranks(72.0, 690.0, 201 * 2**20))]
    s = summarize(r, batch=64, threads=2, saves=[], use_gpu=False)
    assert s["fsdp_vs_ddp_ratio"] == pytest.approx(81 / 90)  # best round of each
    assert s["fsdp_peak_memory_mb_per_worker"] == [700.0, 690.0] and s["ddp_peak_memory_mb_per_worker"] == [1010.0, 1000.0]
    assert s["fsdp_peak_memory_ratio"] == pytest.approx(700 / 1010)
    assert s["fsdp_state_ratio"] == pytest.approx(201 / 400)
    assert "fsdp vs ddp: 81.0 vs 90.0 samples/s (0.90x)" in format_table(s)


@pytest.mark.parametrize("override, key", [
    ("bench.window_steps=1", "bench.window_steps"), ("bench.rounds=0", "bench.rounds"),
    ("bench.warmup_steps=0", "bench.warmup_steps"), ("train.batch_size=6", "train.batch_size"),
    ("bench.threads=1", "bench.threads"), ("bench.cpus=999", "bench.cpus"),
])
def test_bad_bench_values_name_the_key(override, key):
    extra = ["optim.accum_steps=2", "train.num_workers=1"] if key == "train.batch_size" else []
    cfg = load_config(TrainBenchConfig, None, [override, *extra])
    with pytest.raises(ConfigError, match=f"'{key}'"):
        check(cfg)


def test_run_layout_and_data_size():
    cfg = load_config(TrainBenchConfig, None, ["bench.warmup_steps=3", "bench.timed_steps=10", "bench.checkpoints=2",
                                               "train.batch_size=32", "data.shuffle_buffer=100"])
    assert run_steps(cfg.bench) == 3 + 10 + 4 + 1 and save_steps(cfg.bench) == [15, 17]
    # consumed, shuffle buffer, then the look-ahead: 16 batches of budget and 2 actors x 4 queued batches of
    # 1024 rows (the automatic decode call at 64 px)
    assert needed_samples(cfg) == (18 + 4) * 32 + 100 + 16 * 32 + 2 * 4 * 1024
    smaller = load_config(TrainBenchConfig, None, ["data.decode_batch_size=100", "bench.data_buffer_batches=0"])
    assert lookahead_samples(smaller) == 2 * 4 * 100
    assert cfg.name == "bench-train" and isinstance(pretrain_part(cfg), PretrainConfig)


def test_arms_time_psd_at_full_weight_and_clip_without():
    arms = arm_configs(PretrainConfig(psd=PSDConfig(a_max=0.3, ramp="linear")))
    assert (arms["psd"].psd.a_max, arms["psd"].psd.ramp, arms["clip"].psd.a_max) == (0.3, "constant", 0.0)
    assert arm_configs(PretrainConfig(psd=PSDConfig(a_max=0.0)))["psd"].psd.a_max == PSDConfig().a_max


TINY = ModelConfig(overrides={"vision.image_size": 16, "vision.patch_size": 8, "vision.num_hidden_layers": 1,
                              "text.num_hidden_layers": 1, "vision.hidden_size": 32, "text.hidden_size": 32,
                              "vision.intermediate_size": 64, "text.intermediate_size": 64, "projection_dim": 16,
                              "text.max_position_embeddings": 8})


def _batches(tokenizer, n, b):
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(tokenizer(["a red circle"] * b, padding="max_length", max_length=8)["input_ids"])
    return [{"image": torch.randint(0, 255, (b, 3, 16, 16), dtype=torch.uint8, generator=g), "input_ids": ids,
             "attention_mask": torch.ones_like(ids)} for _ in range(n)]


def test_plain_loop_times_alternating_windows(tiny_tokenizer):
    cfg = PretrainConfig(model=TINY, train=TrainConfig(batch_size=8, num_workers=1))
    out = in_memory_windows(cfg, tokenizer=tiny_tokenizer, batches=_batches(tiny_tokenizer, 2, 8), threads=1,
                            warmup_steps=1, windows=2, window_steps=3)
    for arm in ("psd", "clip"):
        assert len(out[arm]) == 2 and all(w["steps"] == 2 and w["samples_per_s"] > 0 for w in out[arm])
    assert out["peak_memory_mb"]["rss_mb"] > 0
    loss = loss_overhead(8, 16, psd=cfg.psd, repeats=3)
    assert loss["psd_loss_s"] > 0 and loss["clip_loss_s"] > 0


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    return train_tokenizer(["a red circle", "a blue square", "a green triangle"] * 10, vocab_size=300,
                           out_dir=str(tmp_path_factory.mktemp("tok")))


def test_clocked_leaves_a_normal_run_alone_and_times_a_bench_run():
    train = TrainConfig(steps=6, batch_size=4, log_every=2, checkpoint_every=3, num_workers=1)
    inner = Inner()
    assert clocked(inner, train, None, device=torch.device("cpu")) == (inner, train)
    hooks, loop_train = clocked(inner, train, {"warmup_steps": 1, "timed_steps": 3, "save_steps": [5]},
                                device=torch.device("cpu"))
    assert (loop_train.log_every, loop_train.checkpoint_every, loop_train.steps) == (1, 0, 6)
    for step in range(1, 7):
        hooks.report(LoopState(step=step), {"step_time_s": 0.1}, save=False, evaluate=False, final=step == 6)
    assert [c[:2] for c in inner.calls] == [(2, False), (4, False), (5, True), (6, True)]
    assert inner.calls[-1][4]  # the final report carries the bench figures
    figures = hooks.extra_final()["bench"]
    assert len(figures) == 1 and figures[0]["timed"]["steps"] == 3 and figures[0]["peak_memory_mb"]["rss_mb"] > 0


def test_peak_memory_is_the_process_own_not_its_spawners():
    """Linux keeps getrusage's ru_maxrss over an exec: a child of a 600 MB parent reported 600 MB. Ray
    workers are such children, so the figure is the address space's own high-water mark."""
    import subprocess
    import sys

    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page
    code = "from raylpclip.engine.clock import peak_memory_mb; print(peak_memory_mb()['rss_mb'])"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del ballast
    assert 20 < child < 500  # torch imported: ~300 MB; the parent's 600 MB ballast would put it above
