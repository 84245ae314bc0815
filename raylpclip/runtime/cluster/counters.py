"""Counting what the data path skips, across every decode actor and read task of a run.

Skips happen in many processes (Ray Data read tasks and decode actors on any node); one small actor
owned by the driver adds them up so that progress lines, metrics and summary.json can show them.

Every epoch reads the same bad samples again, so a count of sightings grows with the epochs: 2 bad rows
read in 3 epochs are 6 sightings. A skip therefore comes with its identity (`data/decode.skip_id` of
its shard and key, a bad shard's of its path), and the counts say:
- `totals` (`skipped` in summary.json, `skipped_<reason>` in the metrics, `skipped {...}` in the progress
  lines): distinct samples (or shards) per reason, each counted once however often it was read;
- `sightings` (`skipped_sightings` in summary.json, `skip_sightings_<reason>` in the metrics, and `sightings {...}`
  in the progress lines once a sample was read more than once): every time one
  was read and dropped. Sightings / distinct is about the number of passes over the bad samples.
A skip sent without an identity (storage retries, `no_label`, rows with neither key nor position)
cannot be told from the same one seen again: it counts once in each.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

PENDING_IDS = 65536  # identities held as a list before they are merged into a reason's sorted array


class DistinctIds:
    """A set of int64 identities in a sorted numpy array (8 bytes each, where a Python set takes ~60: a
    run over web data may skip millions of failed downloads), new ones merged in batches."""

    def __init__(self) -> None:
        self.merged = np.empty(0, np.int64)
        self.pending: list[int] = []

    def add(self, ids: list[int]) -> None:
        self.pending.extend(ids)
        if len(self.pending) >= PENDING_IDS:
            self._merge()

    def __len__(self) -> int:
        self._merge()
        return len(self.merged)

    def _merge(self) -> None:
        if self.pending:
            self.merged = np.union1d(self.merged, np.asarray(self.pending, np.int64))
            self.pending = []


class SkipTally:
    """The counts of one run (the SkipCounter actor's state; plain, so that it can be tested without Ray)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # sightings, by reason
        self.unnamed: Counter[str] = Counter()  # sightings without an identity, by reason
        self.ids: dict[str, DistinctIds] = {}

    def add(self, counts: dict[str, int], ids: dict[str, list[int]] | None = None) -> None:
        """`counts`: skips by reason; `ids`: the identities of (some of) them, by reason."""
        ids = ids or {}
        self.counts.update(counts)
        for reason, n in counts.items():
            named = ids.get(reason, [])
            self.unnamed[reason] += n - len(named)
            if named:
                self.ids.setdefault(reason, DistinctIds()).add(named)

    def totals(self) -> dict[str, int]:
        """Distinct samples (or shards) skipped, by reason."""
        return {reason: self.unnamed[reason] + len(self.ids.get(reason, ())) for reason in self.counts}

    def sightings(self) -> dict[str, int]:
        return dict(self.counts)

    def report(self) -> dict[str, dict[str, int]]:
        return {"skipped": self.totals(), "skipped_sightings": self.sightings()}


SkipCounter = ray.remote(num_cpus=0)(SkipTally)


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
    """The distinct counts so far (SkipTally.totals); {} without a counter."""
    return _ask(counter, "totals", {})


def report(counter) -> dict[str, dict[str, int]]:
    """summary.json's fields: `skipped` (distinct) and `skipped_sightings`, both {} without a counter."""
    return _ask(counter, "report", {"skipped": {}, "skipped_sightings": {}})


def _ask(counter, method: str, empty):
    """A counter lost with its node costs its counts (with a warning), never the run: a report that needs
    them must not fail a training that can go on."""
    if counter is None:
        return empty
    try:
        return ray.get(getattr(counter, method).remote(), timeout=30)
    except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as exc:
        print(f"[raylpclip] warning: the skip/retry counter is gone ({type(exc).__name__}); its counts are lost",
              file=sys.__stdout__, flush=True)
        return empty
