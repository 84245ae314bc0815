"""The train benchmark's plain-loop compute limit and its arithmetic, pure torch (no Ray).

The same model, optimizer and PSD step as a pretraining worker (engine/setup.build_training,
engine/loop.run_loop) over batches already in memory as tensors, timed with the clock the pipeline
runs use (engine/clock.py).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from raylpclip.bench.vision_timing import vision_times
from raylpclip.config import PretrainConfig, PSDConfig, from_dict
from raylpclip.engine.clock import StepClock, peak_memory_mb, window_stats
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.engine.training_setup import build_training
from raylpclip.losses import clip_loss, psd_loss, siglip_loss
from raylpclip.models.patch_dropout import set_patch_dropout


def pooled(windows: list[dict[str, float]]) -> dict[str, float]:
    """Several windows of one kind as one: total steps over total seconds (weights long windows more)."""
    steps, seconds = sum(w["steps"] for w in windows), sum(w["seconds"] for w in windows)
    per_step = seconds / steps if steps else float("inf")
    return {"step_time_s": per_step, "steps": steps, "seconds": seconds,
            "data_wait_fraction": sum(w["data_wait_fraction"] * w["seconds"] for w in windows) / seconds if seconds else 0.0}


# ---------------------------------------------------------------------------------------------------
# The compute limit: the same model and step on in-memory tensors


def arm_configs(cfg: PretrainConfig, *, patch_dropout: float = 0.0) -> dict[str, PretrainConfig]:
    """PSD at full weight from step 0 (ramp constant: the PSD path runs every step, the worst case) and
    plain CLIP (a_max 0), otherwise the run's own settings; with `patch_dropout` > 0 also the PSD arm with
    model.patch_dropout at that value."""
    a_max = cfg.psd.a_max if cfg.psd.a_max > 0 else PSDConfig().a_max
    arms = {"psd": replace(cfg, psd=replace(cfg.psd, a_max=a_max, ramp="constant")),
            "clip": replace(cfg, psd=replace(cfg.psd, a_max=0.0))}
    if patch_dropout > 0:
        arms["patch_dropout"] = replace(arms["psd"], model=replace(cfg.model, patch_dropout=patch_dropout))
    return arms


def in_memory_windows(cfg: PretrainConfig, *, tokenizer, batches: list[dict[str, torch.Tensor]], threads: int,
                      warmup_steps: int, windows: int, window_steps: int, patch_dropout: float = 0.0,
                      device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """The plain torch loop: one model and optimizer, `run_loop` over `batches` cycled (already in
    memory, as tensors), arms PSD and CLIP (and with `patch_dropout` > 0 the PSD step at that patch
    dropout) alternating in windows of `window_steps` after `warmup_steps` untimed steps. Each window's
    first step is its anchor, not timed. Returns per-arm window stats, the step records, this process's
    peak memory, and with `patch_dropout` the vision tower's own times (bench/vision_timing.py)."""
    torch.set_num_threads(threads)
    arms = arm_configs(cfg, patch_dropout=patch_dropout)
    total = warmup_steps + windows * len(arms) * window_steps
    # No unmasked tuning phase here: each window sets its arm's patch dropout itself.
    training = build_training(replace(arms["psd"], train=replace(cfg.train, steps=total, patch_dropout_until_step=0)),
                              tokenizer=tokenizer, rank=0, device=device)
    tower = unwrap(training.model)
    tasks = {name: training.task if name in ("psd", "patch_dropout") else
             type(training.task)(training.model, psd=arm.psd, total_steps=total, seed=arm.train.seed, rank=0)
             for name, arm in arms.items()}
    stream = itertools.cycle(batches)
    state = LoopState()

    def steps(name: str, n: int, clock: StepClock) -> None:
        set_patch_dropout(tower.clip, arms[name].model.patch_dropout)
        train = replace(cfg.train, steps=state.step + n, log_every=1, checkpoint_every=0, eval_every=0)
        run_loop(tasks[name], optimizer=training.optimizer, scheduler=training.scheduler, batches=stream, state=state,
                 train=train, optim=cfg.optim, hooks=clock, device=device)

    steps("psd", warmup_steps, StepClock())
    out: dict[str, Any] = {name: [] for name in arms}
    for _ in range(windows):
        for name in arms:
            clock = StepClock()
            start = state.step
            steps(name, window_steps, clock)
            out[name].append(dict(window_stats(clock.records, first=start + 2, last=state.step,
                                               batch=cfg.train.batch_size), load=clock.load))
    if patch_dropout > 0:
        settings = {"base": cfg.model.patch_dropout, "patch_dropout": patch_dropout}
        out["vision"] = vision_times(tower, batches[0], settings=settings, repeats=window_steps,
                                     precision=cfg.train.precision, device=device)
        out["vision"].update(p=patch_dropout, base_p=cfg.model.patch_dropout)
        set_patch_dropout(tower.clip, cfg.model.patch_dropout)
    dim = unwrap(training.model).clip.config.projection_dim
    out["loss"] = loss_overhead(cfg.train.batch_size // cfg.optim.accum_steps, dim, psd=arms["psd"].psd)
    out["peak_memory_mb"] = peak_memory_mb(device)
    return out


def compute_limit_task(config: dict, tokenizer, batch: dict[str, np.ndarray], bench: dict) -> dict[str, Any]:
    """The compute limit in the process it runs in (a Ray task, runtime/train/bench_support.run_as_task):
    `bench["memory_batches"]` micro-batches cut from the pipeline's decoded `batch` into tensors, then
    `in_memory_windows` on them, on the GPU with `train.use_gpu`."""
    cfg = from_dict(PretrainConfig, config)
    micro = cfg.train.batch_size // cfg.optim.accum_steps
    tensors = [{k: torch.from_numpy(np.array(v[i * micro:(i + 1) * micro])) for k, v in batch.items()}  # own, writable
               for i in range(bench["memory_batches"])]
    device = torch.device("cuda") if cfg.train.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    return in_memory_windows(cfg, tokenizer=tokenizer, batches=tensors, threads=bench["threads"],
                             warmup_steps=bench["warmup_steps"], windows=bench["windows"],
                             window_steps=bench["window_steps"], patch_dropout=bench.get("patch_dropout", 0.0),
                             device=device)


def loss_overhead(b: int, dim: int, *, psd: PSDConfig, repeats: int = 50, seed: int = 0) -> dict[str, float]:
    """PSD's extra cost over CLIP's loss alone: forward and backward of each on the same fixed (b, dim)
    features of one process (the 1-worker case, N = b), interleaved; the median of each, seconds. SigLIP's
    sigmoid loss (loss.kind=siglip, its initial bias) is timed beside them: `siglip_loss_s`."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1)
    scale = torch.tensor(20.0, requires_grad=True)
    sub = torch.Generator().manual_seed(seed)
    alpha = psd.a_max if psd.a_max > 0 else PSDConfig().a_max
    bias = torch.tensor(-10.0, requires_grad=True)
    times: dict[str, list[float]] = {"psd": [], "clip": [], "siglip": []}

    def run(name: str) -> None:
        x, y = u.clone().requires_grad_(), v.clone().requires_grad_()
        start = time.perf_counter()
        if name == "psd":
            loss = psd_loss(x, y, scale, alpha=alpha, subset_fraction=psd.subset_fraction, generator=sub)
        elif name == "siglip":
            loss = siglip_loss(x, y, scale, bias)
        else:
            loss = clip_loss(x, y, scale)
        loss["contrastive_loss"].backward()
        times[name].append(time.perf_counter() - start)

    for _ in range(repeats):
        run("psd")
        run("clip")
        run("siglip")
    psd_s, clip_s = float(np.median(times["psd"])), float(np.median(times["clip"]))
    return {"psd_loss_s": psd_s, "clip_loss_s": clip_s, "extra_s": psd_s - clip_s,
            "siglip_loss_s": float(np.median(times["siglip"]))}
