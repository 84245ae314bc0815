"""A clock around the training loop's hooks: every step's end time, wall and data wait, pure torch.

`StepClock` is a LoopHooks that the loop calls after every step (the loop runs with log_every=1); it
passes the real hooks' calls through at their own cadence, so it sits inside the real pipeline without
changing what the pipeline does. `window_stats` turns a run's records into rates: the least-squares
slope of samples over step end times past a warm-up (a step's end time includes whatever the hooks did,
e.g. Ray reports and checkpoints). `clocked` is how the pretraining worker puts the clock in when
`raylpclip bench train` runs it (bench/train.py).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np
import torch

from raylpclip.config import TrainConfig
from raylpclip.distributed import gather_objects
from raylpclip.engine.loop import LoopState
from raylpclip.parallel.fsdp_sharding import local_bytes, optimizer_tensors


@dataclass
class StepRecord:
    step: int  # optimizer steps done after this one
    end: float  # time.perf_counter() when the loop reported the step
    wall: float  # the loop's own wall time of the step (fetch, forward, backward, optimizer)
    wait: float  # of which: waiting for the batch


@dataclass
class StepClock:
    """LoopHooks recording every step; forwards to `inner` on multiples of `log_every`, on `save_steps`
    (save=True) and on `final_step` (final=True, save=True). Timings of the forwarded calls are kept."""

    inner: Any = None
    log_every: int = 10
    save_steps: frozenset[int] = frozenset()
    final_step: int = -1
    extra_final: Callable[[], dict[str, Any]] | None = None  # its result is merged into the final report's metrics
    records: list[StepRecord] = field(default_factory=list)
    report_s: dict[int, float] = field(default_factory=dict)  # step -> seconds inside inner.report
    load: list[float] = field(default_factory=list)  # 1-minute load average at the first and last record

    def report(self, state: LoopState, metrics: dict[str, float], *, save: bool, evaluate: bool, final: bool) -> None:
        wall = float(metrics.get("step_time_s", 0.0))
        self.records.append(StepRecord(state.step, time.perf_counter(), wall,
                                       wall * float(metrics.get("data_wait_fraction", 0.0))))
        if len(self.records) == 1 or state.step == self.final_step:
            self.load.append(os.getloadavg()[0])
        if self.inner is None:
            return
        is_final, is_save = state.step == self.final_step, state.step in self.save_steps
        if is_final or is_save or state.step % self.log_every == 0:
            start = time.perf_counter()
            extra = self.extra_final() if is_final and self.extra_final is not None else {}
            self.inner.report(state, dict(metrics, **extra),
                              save=is_save or is_final, evaluate=False, final=is_final)
            self.report_s[state.step] = time.perf_counter() - start


def slope_per_s(times: Iterable[float], counts: Iterable[float]) -> float:
    """Least-squares slope of counts over times (per second); 0 for a window of no length."""
    t, c = np.asarray(list(times), float), np.asarray(list(counts), float)
    if len(t) < 2 or t[-1] <= t[0]:
        return 0.0
    return float(np.polyfit(t - t[0], c, 1)[0])


def window_stats(records: list[StepRecord], *, first: int, last: int, batch: int) -> dict[str, float]:
    """Rates over steps first..last (inclusive, 1-based step counts), anchored at the end of step first-1.

    samples_per_s: slope of the global samples done over step end times; step_time_s: batch / that
    rate (seconds per step, hooks included); loop_step_time_s: the median of the loop's own step
    times; data_wait_fraction: time spent waiting for batches over the window's length."""
    by_step = {r.step: r for r in records}
    missing = [s for s in range(first - 1, last + 1) if s not in by_step]
    if first < 1 or last < first or missing:
        raise ValueError(f"window of steps {first}..{last} needs records of steps {first - 1}..{last}; "
                         f"missing {missing[:5]}")
    window = [by_step[s] for s in range(first - 1, last + 1)]
    rate = slope_per_s([r.end for r in window], [batch * (r.step - first + 1) for r in window])
    seconds = window[-1].end - window[0].end
    timed = window[1:]
    return {
        "samples_per_s": rate,
        "step_time_s": batch / rate if rate > 0 else float("inf"),
        "loop_step_time_s": float(np.median([r.wall for r in timed])),
        "data_wait_fraction": sum(r.wait for r in timed) / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "steps": len(timed),
    }



def _linux_peak_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """This process's peak resident memory and, on CUDA, the peak of memory allocated by torch.

    On Linux the address space's high-water mark (/proc/self/status VmHWM), not getrusage's ru_maxrss:
    Linux carries ru_maxrss over an exec, so a Ray worker (or any child of a large process) would report
    its spawner's peak when that was larger than its own. macOS: ru_maxrss, in bytes there."""
    out = {"rss_mb": _linux_peak_kb() / 1024 if sys.platform.startswith("linux")
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024)}
    if device is not None and device.type == "cuda":
        out["cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out




def clocked(hooks, train: TrainConfig, spec: dict | None, *, device: torch.device):
    """(hooks, train) for `run_loop`: unchanged without a bench `spec`; with one, a StepClock around
    `hooks` and a loop config that reports every step to it (the clock forwards at `train.log_every`, on
    spec["save_steps"] and at the final step). The final report's metrics then carry "bench": every
    rank's figures of steps spec["warmup_steps"]+1 .. +spec["timed_steps"], gathered (a collective)."""
    if not spec:
        return hooks, train
    clock = StepClock(inner=hooks, log_every=train.log_every, save_steps=frozenset(spec["save_steps"]),
                      final_step=train.steps)
    first, last = spec["warmup_steps"] + 1, spec["warmup_steps"] + spec["timed_steps"]

    def figures() -> dict[str, Any]:
        mine = {"timed": window_stats(clock.records, first=first, last=last, batch=train.batch_size),
                "peak_memory_mb": peak_memory_mb(device), "load": clock.load,
                "report_s": {str(k): v for k, v in clock.report_s.items()}}
        task, optimizer = getattr(hooks, "task", None), getattr(hooks, "optimizer", None)
        if task is not None and optimizer is not None:  # what this worker holds: a shard of it under fsdp
            params = getattr(task.model, "module", task.model).parameters()
            mine["state_bytes"] = local_bytes(params) + local_bytes(optimizer_tensors(optimizer))
        return {"bench": gather_objects(mine)}

    clock.extra_final = figures
    return clock, replace(train, log_every=1, checkpoint_every=0, eval_every=0)
