"""A route's rate: samples/s over its timed batches (after the warm-up, before the end of the data),
with the CPU its timing thread and the whole machine used in that window."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from raylpclip import batch_schema
from raylpclip.bench.cpu_accounting import machine_busy_seconds


@dataclass
class Rate:
    per_s: float  # samples/s: the slope of samples over time across the timed batches
    samples: int  # timed samples (after warm-up)
    seconds: float
    window: tuple[float, float] = (0.0, 0.0)  # time.time() at its start and end, to line up with CPU counters
    cpu_s: float | None = None  # CPU seconds the route used in the window: the timing thread's, or (TreeCpu) all
    machine_cpu_s: float | None = None  # CPU seconds every process on the machine used, ours and anyone else's


class Meter:
    """Samples/s over batches warmup+1 .. last. The clock starts when batch `warmup` arrives, so start-up
    and the pipeline's fill-up are left out, and stops at batch `last`, before the end of the data.

    The rate is the least-squares slope of samples against arrival time, not (samples / seconds):
    a pipeline hands out batches in bursts of a block, and where the two ends fall within a burst
    would otherwise move the rate by a block's worth of samples."""

    def __init__(self, warmup: int, last: int):
        self.warmup, self.last, self.seen, self.samples = warmup, last, 0, 0
        self.times: list[float] = []
        self.counts: list[int] = []
        self.window, self.thread_cpu, self.machine_cpu = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]

    def add(self, n: int) -> None:
        self.seen += 1
        if self.seen == self.warmup or self.warmup < self.seen <= self.last:
            if self.seen > self.warmup:
                self.samples += n
            self.times.append(time.perf_counter())
            self.counts.append(self.samples)
            if self.seen in (self.warmup, self.last):
                end = int(self.seen == self.last)
                self.window[end], self.thread_cpu[end] = time.time(), time.thread_time()
                self.machine_cpu[end] = machine_busy_seconds()

    def rate(self) -> Rate:
        if self.seen < self.last:
            raise ValueError(f"only {self.seen} batches arrived; the timed ones are {self.warmup + 1} to {self.last}")
        t = np.asarray(self.times) - self.times[0]
        slope = float(np.polyfit(t, self.counts, 1)[0]) if t[-1] > 0 else 0.0
        return Rate(slope, self.samples, float(t[-1]), tuple(self.window), cpu_s=self.thread_cpu[1] - self.thread_cpu[0],
                    machine_cpu_s=self.machine_cpu[1] - self.machine_cpu[0])


def timed_batches(batches: Iterable[dict], *, warmup: int, last: int,
                  on_batch: Callable[[dict], None] | None = None) -> Rate:
    """Rate over batches warmup+1 .. last. All batches are consumed: a DataLoader whose iterator is
    dropped half-way kills its workers mid-batch."""
    meter = Meter(warmup, last)
    for batch in batches:
        meter.add(len(batch[batch_schema.IMAGE]))
        if on_batch is not None:
            on_batch(batch)
    return meter.rate()
