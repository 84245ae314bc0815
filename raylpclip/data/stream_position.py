"""Where a run is in its data stream: which samples of the current epoch it has consumed.

Every training row carries a `position`, `(shard ordinal << 32) | row index in the shard`, where the
ordinal is the shard's index in the source's sorted file list. Reads run in parallel, decode actors
finish out of order and Ray Data hands blocks to whichever worker asks, so *which* samples the first
n steps consumed is not a function of n: a count (`samples_seen`) cannot say what to skip. The set of
positions can. Consumption within a shard is close to a prefix, so the set stays small as sorted,
disjoint intervals (`RangeSet`).

Pure numpy, no Ray: the worker tracks, the readers skip, both through this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

ROW_BITS = 32
FORMAT_VERSION = 1


def pack(ordinal: int, rows: np.ndarray) -> np.ndarray:
    """Positions of `rows` (row indices) of the shard with index `ordinal` in its source's file list."""
    return (np.int64(ordinal) << np.int64(ROW_BITS)) + np.asarray(rows, dtype=np.int64)


def shard_of(positions: np.ndarray) -> np.ndarray:
    return np.asarray(positions, dtype=np.int64) >> np.int64(ROW_BITS)


class RangeSet:
    """A set of int64 positions as sorted, disjoint, non-adjacent half-open intervals [start, end)."""

    def __init__(self, starts: Iterable[int] = (), ends: Iterable[int] = ()):
        self.starts = np.asarray(list(starts) if not isinstance(starts, np.ndarray) else starts, dtype=np.int64)
        self.ends = np.asarray(list(ends) if not isinstance(ends, np.ndarray) else ends, dtype=np.int64)

    @classmethod
    def of(cls, positions) -> "RangeSet":
        p = np.unique(np.asarray(positions, dtype=np.int64))
        if p.size == 0:
            return cls()
        breaks = np.nonzero(np.diff(p) != 1)[0]
        return cls(p[np.r_[0, breaks + 1]], p[np.r_[breaks, p.size - 1]] + 1)

    def __len__(self) -> int:
        """The number of positions (not intervals)."""
        return int((self.ends - self.starts).sum())

    @property
    def intervals(self) -> int:
        return int(self.starts.size)

    def __eq__(self, other) -> bool:
        return (isinstance(other, RangeSet) and np.array_equal(self.starts, other.starts)
                and np.array_equal(self.ends, other.ends))

    def union(self, other: "RangeSet") -> "RangeSet":
        starts = np.concatenate([self.starts, other.starts])
        ends = np.concatenate([self.ends, other.ends])
        if starts.size == 0:
            return RangeSet()
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        reach = np.maximum.accumulate(ends)
        # A new interval starts where a start lies beyond everything before it reaches (touching merges).
        new = np.r_[True, starts[1:] > reach[:-1]]
        group = np.cumsum(new) - 1
        merged_ends = np.zeros(int(group[-1]) + 1, dtype=np.int64)
        np.maximum.at(merged_ends, group, ends)
        return RangeSet(starts[new], merged_ends)

    def contains(self, positions) -> np.ndarray:
        """Boolean mask: which of `positions` are in the set."""
        p = np.asarray(positions, dtype=np.int64)
        if self.starts.size == 0:
            return np.zeros(p.shape, dtype=bool)
        idx = np.searchsorted(self.starts, p, side="right") - 1
        return (idx >= 0) & (p < self.ends[np.clip(idx, 0, None)])

    def covers_shard(self, ordinal: int, rows: int) -> bool:
        """True when every row 0..rows-1 of shard `ordinal` is in the set."""
        lo = int(pack(ordinal, np.array([0]))[0])
        idx = np.searchsorted(self.starts, lo, side="right") - 1
        return bool(idx >= 0 and self.starts[idx] <= lo and self.ends[idx] >= lo + rows)

    def to_json(self) -> list[list[int]]:
        return [[int(s), int(e)] for s, e in zip(self.starts, self.ends)]

    @classmethod
    def from_json(cls, pairs: list[list[int]]) -> "RangeSet":
        return cls([p[0] for p in pairs], [p[1] for p in pairs])


def files_fingerprint(files: list[str]) -> str:
    """Positions name shards by their index in the file list: a resumed run may only use them when
    its source lists the very same files."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]


@dataclass
class SourcePosition:
    """One source's place in its stream: the epoch and the positions consumed in it (all workers)."""

    epoch: int = 0
    consumed: RangeSet = field(default_factory=RangeSet)
    fingerprint: str = ""

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed.to_json(), "files": self.fingerprint,
                "samples": len(self.consumed)}

    @classmethod
    def from_json(cls, d: dict) -> "SourcePosition":
        return cls(int(d["epoch"]), RangeSet.from_json(d["consumed"]), str(d.get("files", "")))


def dumps(positions: list[SourcePosition], *, step: int) -> bytes:
    return json.dumps({"version": FORMAT_VERSION, "step": step,
                       "sources": [p.to_json() for p in positions]}).encode()


def loads(data: bytes | str) -> tuple[int, list[SourcePosition]]:
    d = json.loads(data)
    if d.get("version") != FORMAT_VERSION:
        raise ValueError(f"data position format {d.get('version')!r}, expected {FORMAT_VERSION}")
    return int(d["step"]), [SourcePosition.from_json(s) for s in d["sources"]]


class PositionTracker:
    """One source's consumption on one worker: positions handed to the loop since the last
    checkpoint, tagged with their epoch. At a checkpoint every worker's news is gathered and merged
    into the run's `SourcePosition` (`merge`)."""

    def __init__(self, start: SourcePosition):
        self.epoch = start.epoch
        self.news: dict[int, list[np.ndarray]] = {}

    def consumed(self, positions) -> None:
        self.news.setdefault(self.epoch, []).append(np.asarray(positions, dtype=np.int64))

    def next_epoch(self) -> None:
        self.epoch += 1

    def take_news(self) -> dict[int, RangeSet]:
        news = {epoch: RangeSet.of(np.concatenate(parts)) for epoch, parts in self.news.items()}
        self.news = {}
        return news


def merge(position: SourcePosition, news_per_worker: list[dict[int, RangeSet]]) -> SourcePosition:
    """The run's position after a checkpoint interval: the newest epoch any worker reached, with the
    union of what was consumed in it (an older epoch's news is done with)."""
    epoch = max([position.epoch] + [e for news in news_per_worker for e in news])
    consumed = position.consumed if epoch == position.epoch else RangeSet()
    for news in news_per_worker:
        if epoch in news:
            consumed = consumed.union(news[epoch])
    return SourcePosition(epoch, consumed, position.fingerprint)
