"""Counting what the data path skips, across every decode actor and read task of a run.

Skips happen in many processes (Ray Data read tasks and decode actors on any node); one small actor
owned by the driver adds them up so that progress lines, metrics and summary.json can show them.
"""

from __future__ import annotations

import sys
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
    # On the head node: a worker node lost mid-run (see tests/drills/node_drill.py) must not take the counts
    # along, and the head holds the cluster's GCS, so a run cannot outlive it anyway. (The driver's own
    # node is not enough: a driver on a machine with several nodes may be attached to any of them.)
    # Pinned (not soft): a soft affinity was seen to land on a worker node of the node drill.
    return SkipCounter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id(), soft=False)).remote()


def head_node_id() -> str:
    """The live head node's id (the driver's node when none says it is the head)."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return ray.get_runtime_context().get_node_id()


def totals(counter) -> dict[str, int]:
    """The counts so far; {} without a counter. A counter lost with its node costs its counts (with a
    warning), never the run: a report that needs them must not fail a training that can go on."""
    if counter is None:
        return {}
    try:
        return ray.get(counter.totals.remote(), timeout=30)
    except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as exc:
        print(f"[raylpclip] warning: the skip/retry counter is gone ({type(exc).__name__}); its counts are lost",
              file=sys.__stdout__, flush=True)
        return {}
