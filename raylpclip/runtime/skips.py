"""Counting what the data path skips, across every decode actor and read task of a run.

Skips happen in many processes (Ray Data read tasks and decode actors on any node); one small actor
owned by the driver adds them up so that progress lines, metrics and summary.json can show them.
"""

from __future__ import annotations

from collections import Counter

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)
class SkipCounter:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def totals(self) -> dict[str, int]:
        return dict(self.counts)


def new_counter():
    # On the driver's node: a node lost mid-run (see runtime/node_drill.py) must not take the counts along.
    here = ray.get_runtime_context().get_node_id()
    return SkipCounter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()


def totals(counter) -> dict[str, int]:
    """The counts so far; {} without a counter."""
    return ray.get(counter.totals.remote(), timeout=30) if counter is not None else {}
