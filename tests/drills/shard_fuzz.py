"""A fuzzed shard corpus: damaged webdataset tars and parquet files made deterministically from good ones
(img2dataset layout, as raylpclip.data.shard_writer writes it), each with what a correct reader must
do with it. fuzz_run.py reads them with the product's code and checks.

The invariant by damage kind (a Case's `good`, `bad`, `either`, `damaged`, `foreign`):
- tar members renamed, tar and parquet payloads (fuzz_payloads.py), parquet of wrong types and nulls:
  exact. Every good sample delivered exactly once with its caption's tokens, pixels and label; every
  bad one counted, never delivered; the shard not counted as damaged.
- tar cut at a random offset: exact. Samples whose image and caption members lie wholly before the
  cut are good, samples cut part-way are bad (counted), samples past it were never read; the shard is
  counted as damaged unless the cut left the first end-of-archive block whole.
- one bit flipped in a tar: exact where the flip is: in a header (unless tarfile still reads it the
  same), the samples wholly before that member are good and the shard is damaged; in a member's data,
  that sample is `either` (its caption, image or label, whichever was hit, unchecked), all others good;
  in the end-of-archive block, all good and damaged; in padding or past the end, all good.
- several bits flipped in a tar: the samples wholly before the first flip are good, the others either;
  damage not checked. Keys outside the shard may be delivered only where two flips in one header kept
  its checksum (`foreign`).
- parquet cut short, random bytes (tar or parquet): nothing delivered, the shard counted as damaged.
- bits flipped in a parquet file: no crash, no hang, every row read delivered or counted; nothing else
  is known (a flip in a page of keys gives other keys, in the footer anything).
Always: no exception, no shard over its time limit, every row the reader gave delivered or counted.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from raylpclip.data.sample import Sample
from raylpclip.data.shard_writer import _metadata, sample_key
from tests.drills import fuzz_payloads as payloads
from tests.drills import fuzz_renames as renames
from tests.drills import fuzz_tables as tables
from tests.drills.fuzz_payloads import Item

SAMPLES_PER_SHARD = 8
BLOCK = 512


@dataclass
class Case:
    name: str
    kind: str
    fmt: str  # "webdataset" or "parquet"
    data: bytes
    good: dict[str, Item] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)
    either: dict[str, Item] = field(default_factory=dict)
    damaged: bool | None = False
    foreign: bool = False


def base_items(shard_id: int) -> list[Item]:
    """A good shard's samples: 32 x 32 JPEGs and PNGs, captions of words, labels in their `.json`."""
    rng, nprng = random.Random(shard_id), np.random.default_rng(shard_id)
    items = []
    for i in range(SAMPLES_PER_SHARD):
        image = payloads.image_bytes(payloads.random_image(nprng), "JPEG" if i % 2 == 0 else "PNG")
        sample = Sample(key="", jpg=image, caption=payloads.caption(rng), meta={"label": (shard_id + i) % 10})
        key = sample_key(shard_id, i, samples_per_shard=SAMPLES_PER_SHARD)
        meta = json.dumps(_metadata(sample, key), indent=4).encode("utf-8")
        items.append(Item(key, image, sample.caption.encode(), meta, sample.caption, image, sample.meta["label"]))
    return items


def members(items: list[Item]) -> list[tuple[str, bytes]]:
    """Each sample's members in the writer's order (jpg, json, txt); a None member is left out."""
    return [(f"{it.key}.{ext}", data) for it in items for ext, data in (("jpg", it.jpg), ("json", it.json),
                                                                         ("txt", it.txt)) if data is not None]


def tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    """A ustar archive as shard_writer._tar_bytes writes one; names may hold raw bytes as surrogates."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "bigdata"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@lru_cache(maxsize=16)
def base_tar(files: tuple[tuple[str, bytes], ...]) -> bytes:
    """(the good shards' tars, made once)"""
    return tar_bytes(list(files))


def layout(files: list[tuple[str, bytes]]) -> tuple[list[tuple[int, int, int]], int]:
    """(header offset, data end, padded end) of each member, and where the end-of-archive marker starts."""
    spans, offset = [], 0
    for _name, data in files:
        end = offset + BLOCK + len(data)
        spans.append((offset, end, offset + BLOCK + -(-len(data) // BLOCK) * BLOCK))
        offset = spans[-1][2]
    return spans, offset


def _sample_of(files, items) -> list[int]:
    """The index in `items` of each member's sample."""
    index = {it.key: n for n, it in enumerate(items)}
    return [index[name.rsplit(".", 1)[0]] for name, _ in files]


def _prefix_case(name, kind, data, items, files, first_lost: int, damaged) -> Case:
    """Members from `first_lost` on never reach the reader: samples wholly before are good, those
    with a member read are bad (lacking a member), those with none are gone."""
    owner, case = _sample_of(files, items), Case(name, kind, "webdataset", data, damaged=damaged)
    read = {owner[m] for m in range(first_lost)}
    for n in read:
        if all(owner[m] != n for m in range(first_lost, len(files))):
            case.good[items[n].key] = items[n]
        else:
            case.bad.add(items[n].key)
    return case


def truncated(name: str, items: list[Item], rng: random.Random) -> Case:
    files = members(items)
    data, (spans, marker) = base_tar(tuple(files)), layout(files)
    cut = rng.randrange(0, marker + BLOCK + 1) if rng.random() < 0.95 else rng.randrange(marker, len(data))
    complete = [m for m, (_h, end, _p) in enumerate(spans) if end <= cut]
    first_lost = len(complete)  # members are complete in order
    return _prefix_case(name, "tar_cut", data[:cut], items, files, first_lost, cut < marker + BLOCK)


def _header_intact(original: bytes, damaged: bytes) -> bool | None:
    """True: tarfile reads the damaged header as the original; False: not a valid header; None: a valid
    header of other contents (flips that cancel out in the checksum)."""
    try:
        got = tarfile.TarInfo.frombuf(damaged, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    want = tarfile.TarInfo.frombuf(original, "utf-8", "surrogateescape")
    return (got.name, got.size, got.type) == (want.name, want.size, want.type) or None


def flipped(name: str, items: list[Item], rng: random.Random, flips: int) -> Case:
    files = members(items)
    data, (spans, marker) = base_tar(tuple(files)), layout(files)
    damaged = bytearray(data)
    spots = sorted(rng.randrange(0, marker + BLOCK) if rng.random() < 0.9 else rng.randrange(len(data))
                   for _ in range(flips))
    for spot in spots:
        damaged[spot] ^= 1 << rng.randrange(8)
    owner, kind = _sample_of(files, items), "tar_bitflip" if flips == 1 else "tar_bitflips"
    headers = {m: _header_intact(data[h:h + BLOCK], bytes(damaged[h:h + BLOCK])) for m, (h, _e, _p) in enumerate(spans)
               if any(h <= spot < h + BLOCK for spot in spots)}
    first_bad_header = min((m for m, ok in headers.items() if not ok), default=None)
    if flips > 1:
        first = min(spots)
        case = Case(name, kind, "webdataset", bytes(damaged), damaged=None, foreign=None in headers.values())
        for n, item in enumerate(items):
            before = all(spans[m][2] <= first for m in range(len(files)) if owner[m] == n)
            (case.good if before and not case.foreign else case.either)[item.key] = item if before else _blind(item)
        return case
    spot = spots[0]
    if first_bad_header is not None:
        return _prefix_case(name, kind, bytes(damaged), items, files, first_bad_header, True)
    case = Case(name, kind, "webdataset", bytes(damaged), good={it.key: it for it in items},
                damaged=marker <= spot < marker + BLOCK)
    for m, (h, end, _p) in enumerate(spans):
        if h + BLOCK <= spot < end:  # in member m's data: what it carries is unknown now
            item = case.good.pop(items[owner[m]].key)
            ext = files[m][0].rsplit(".", 1)[1]
            unknown = {"jpg": "ref", "txt": "caption", "json": "label"}[ext]
            case.either[item.key] = payloads._with(item, **{unknown: None})
    return case


def _blind(item: Item) -> Item:
    return payloads._with(item, caption=None, ref=None, label=None)


def random_bytes(name: str, rng: random.Random, fmt: str) -> Case:
    size = rng.choice((0, 1, 100, 511, 512, 513, 1024, 5000, 30000))
    prefix = rng.choice((b"", b"", b"\x1f\x8b\x08", b"BZh91", b"\xfd7zXZ\0", b"\x28\xb5\x2f\xfd", b"PAR1"))
    data = (prefix + rng.randbytes(size))[: max(size, len(prefix))]
    if fmt == "parquet" and rng.random() < 0.5:
        data = b"PAR1" + data + b"PAR1"
    return Case(name, f"{fmt}_random", fmt, data, damaged=True)


def renamed(name: str, items: list[Item], rng: random.Random) -> Case:
    """One sample's members under other names (fuzz_renames.RENAMES): each rename's verdict is its effect."""
    n, how = rng.randrange(len(items)), rng.choice(sorted(renames.RENAMES))
    files, verdict, key, extra_bad = renames.rename(members(items), items[n], how)
    case = Case(name, f"tar_rename_{how}", "webdataset", tar_bytes(files), bad=extra_bad)
    for m, item in enumerate(items):
        if m != n:
            case.good[item.key] = item
        elif verdict == "bad":
            case.bad.add(item.key)
        else:
            case.good[key] = payloads._with(item, key=key, label=-1 if verdict == "good_nolabel" else item.label)
    return case


def with_payloads(name: str, items: list[Item], rng: random.Random, fmt: str) -> Case:
    """1-3 samples carrying odd payloads (fuzz_payloads.KINDS), the rest as they were."""
    chosen = rng.sample(range(len(items)), rng.randint(1, 3))
    items, verdicts = list(items), {}
    for n in chosen:
        items[n], verdicts[items[n].key] = payloads.damage(items[n], rng.choice(payloads.KINDS), rng)
    data = tar_bytes(members(items)) if fmt == "webdataset" else tables.parquet_of(items)
    case = Case(name, f"{fmt}_payload", fmt, data)
    for item in items:
        verdict = verdicts.get(item.key, "good")
        if verdict == "good":
            case.good[item.key] = item
        elif verdict == "bad":
            case.bad.add(item.key)
        else:
            case.either[item.key] = item
    return case


def parquet_damaged(name: str, items: list[Item], rng: random.Random, kind: str) -> Case:
    data = tables.parquet_base(items)
    if kind == "parquet_cut":
        return Case(name, kind, "parquet", data[: rng.randrange(len(data))], damaged=True)
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
    return Case(name, kind, "parquet", bytes(damaged), either={it.key: _blind(it) for it in items}, damaged=None,
                foreign=True)


# (maker, shards): 1,200 in all, ~250 of each of the four tar damages that the issue names first
PLAN = (("tar_bitflip", 250), ("tar_bitflips", 100), ("tar_cut", 200), ("tar_random", 50), ("tar_rename", 120),
        ("tar_payload", 220), ("parquet_cut", 40), ("parquet_bitflips", 60), ("parquet_random", 30),
        ("parquet_types", 80), ("parquet_payload", 50))


def corpus(seed: int = 0, bases: int = 6, plan=PLAN) -> list[Case]:
    """The whole corpus (or `plan`'s part of it), the same bytes for the same seed."""
    items = [base_items(shard_id) for shard_id in range(bases)]
    cases = []
    for kind, count in plan:
        for i in range(count):
            rng = random.Random(f"{seed}/{kind}/{i}")
            base, name = items[i % bases], f"{kind}-{i:04d}.{'tar' if kind.startswith('tar') else 'parquet'}"
            if kind == "tar_cut":
                cases.append(truncated(name, base, rng))
            elif kind in ("tar_bitflip", "tar_bitflips"):
                cases.append(flipped(name, base, rng, 1 if kind == "tar_bitflip" else rng.randint(2, 4)))
            elif kind.endswith("_random"):
                cases.append(random_bytes(name, rng, "webdataset" if kind.startswith("tar") else "parquet"))
            elif kind == "tar_rename":
                cases.append(renamed(name, base, rng))
            elif kind.endswith("_payload"):
                cases.append(with_payloads(name, base, rng, "webdataset" if kind.startswith("tar") else "parquet"))
            elif kind == "parquet_types":
                variant, data, good, bad = tables.retyped(base, rng)
                cases.append(Case(name, f"parquet_{variant}", "parquet", data, good=good, bad=bad))
            else:
                cases.append(parquet_damaged(name, base, rng, kind))
    return cases
