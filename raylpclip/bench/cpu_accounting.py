"""CPU seconds from /proc: every process of this process's tree (DataLoader workers, a local Ray
instance's daemons, workers and actors), sampled in the background so that a route's timed window can
be charged what it used on every core; and what the whole machine was busy with meanwhile."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: rate_meter imports this module (machine_busy_seconds)
    from raylpclip.bench.rate_meter import Rate


def _proc_cpu() -> tuple[dict[int, int], dict[int, float]]:
    """Parent and user+system CPU seconds of every process (Linux /proc; empty elsewhere)."""
    parents, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    return parents, cpu


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), whoever ran."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds used so far by `root` and by every process below it (DataLoader workers, a local Ray
    instance's daemons, workers and actors), by pid."""
    parents, cpu = _proc_cpu()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        found[pid] = cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return found


class TreeCpu:
    """Samples `tree_cpu` of this process twice a second, in the background, so that the timed
    window of a route that runs in many processes can be charged the CPU it used on every core. (A
    joined cluster's processes are not below this one: not counted.) Next to what the whole machine
    used in the window, it shows how much of the machine others took. One scan of /proc costs a few
    ms: the single-threaded plain loops run without this and count their own thread's CPU instead."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.samples = interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-cpu", daemon=True)
        # Each process's latest figure, kept after it exits: a process that ends inside the window (Ray
        # Data's decode actors end with their dataset, before the Train worker has drained its buffer)
        # would otherwise take all its CPU out of the total and make the window's difference too small.
        self._seen: dict[int, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._seen.update(tree_cpu(os.getpid()))
            self.samples.append((time.time(), sum(self._seen.values())))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def charge(self, rate: Rate) -> Rate:
        """`rate` with the CPU seconds of this process tree within its window, interpolated."""
        if len(self.samples) < 2 or rate.window[1] <= rate.window[0]:
            return dataclasses.replace(rate, cpu_s=None)
        times, totals = zip(*self.samples)
        used = np.interp(rate.window[1], times, totals) - np.interp(rate.window[0], times, totals)
        return dataclasses.replace(rate, cpu_s=float(used))
