"""The fuzzed shard corpus (tests/drills/shard_fuzz.py): 1,200 damaged tars and parquet files read with
the product's code (tests/drills/fuzz_run.py) in a process of its own: no crash, no hang, every good
sample delivered exactly once as it was, every bad one counted, every damaged shard counted. Prints the
figures line for the closing note. Takes ~15-30 s (more on a loaded machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raylpclip.data.shard_writer import _tar_bytes
from tests.drills import fuzz_payloads
from tests.drills.fuzz_payloads import Item
from tests.drills.shard_fuzz import Case, base_items, corpus, members, tar_bytes

REPO = Path(__file__).resolve().parents[2]
DAMAGES = ("tar_bitflip", "tar_bitflips", "tar_cut", "webdataset_random", "tar_rename_jpg_to_xyz",
           "tar_rename_not_utf8_key", "webdataset_payload", "parquet_cut", "parquet_bitflips", "parquet_random",
           "parquet_txt_int", "parquet_jpg_null_rows", "parquet_txt_null_type", "parquet_payload")


def test_the_fuzzed_corpus_gives_no_crash_hang_loss_or_uncounted_sample(tmp_path):
    report_path, progress = tmp_path / "report.json", tmp_path / "progress"
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.drills.fuzz_run", str(report_path), str(progress)],
                              cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fuzz run hung, at shard {progress.read_text() if progress.exists() else '?'}")
    assert proc.returncode == 0, (f"the fuzz run died (rc {proc.returncode}) at shard "
                                  f"{progress.read_text() if progress.exists() else '?'}: {proc.stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    print("\n" + proc.stdout.strip())  # the figures line
    assert report["violations"] == [], "\n".join(report["violations"][:50])
    figures = report["figures"]
    assert figures["shards"] >= 1000 and figures["shards_parquet"] >= 200
    assert not set(DAMAGES) - set(report["kinds"])
    assert figures["good"] > 5000 and figures["bad"] > 500 and figures["damaged_shards_counted"] > 400
    # each sample read is delivered or counted (fuzz_run checks it per shard; here the totals)
    assert figures["read"] == figures["delivered"] + figures["counted"]
    assert report["peak_rss_mb"] < 1024  # a decoded bomb alone took ~1 GB


def test_the_corpus_is_deterministic_and_in_the_writers_layout():
    plan = (("tar_bitflip", 4), ("tar_cut", 4), ("tar_payload", 4), ("parquet_types", 4), ("parquet_bitflips", 2))
    first, again = corpus(plan=plan), corpus(plan=plan)
    assert [(c.name, c.data, sorted(c.good), sorted(c.bad)) for c in first] == \
        [(c.name, c.data, sorted(c.good), sorted(c.bad)) for c in again]
    assert corpus(seed=1, plan=plan)[0].data != first[0].data
    items = base_items(3)  # the good shards are what shard_writer writes
    from raylpclip.data.sample import Sample
    samples = [Sample("", it.jpg, it.caption, {"label": it.label}) for it in items]
    metas = [json.loads(it.json) for it in items]
    assert tar_bytes(members(items)) == _tar_bytes(samples, metas)


def _got(delivered=(), counted=None, damaged=0, seen=None):
    """An outcome of fuzz_run.read: (key, pixels, token ids, label) delivered."""
    counted = counted or {}
    seen = len(delivered) + sum(map(len, counted.values())) if seen is None else seen
    return {"seen": seen, "delivered": list(delivered), "counted": counted, "damaged": damaged, "unnamed": 0}


def test_the_checks_catch_a_reader_that_loses_delivers_or_miscounts():
    """The drill is not vacuous: each way of getting a shard wrong is a violation."""
    from tests.drills.fuzz_run import IMAGE_SIZE, _pixels, check, text_encoder, token_maker

    tokens = token_maker(text_encoder())
    image = fuzz_payloads.image_bytes(fuzz_payloads.random_image(np.random.default_rng(0)), "PNG")
    good = Item("k1", image, b"a red dog", b"{}", "a red dog", image, 3)
    case = Case("s.tar", "test", "webdataset", b"", good={"k1": good}, bad={"k2"}, damaged=True)
    pixels = np.frombuffer(_pixels(image), np.uint8).reshape(3, IMAGE_SIZE, IMAGE_SIZE)
    right = ("k1", pixels, np.asarray(tokens("a red dog")), 3)
    assert check(case, _got([right], {"bad_image": ["k2"]}, damaged=1), tokens) == []
    wrong = {
        "lost": _got([], {"bad_image": ["k2"]}, damaged=1),
        "twice": _got([right, right], {"bad_image": ["k2"]}, damaged=1),
        "bad delivered": _got([right, ("k2", *right[1:])], damaged=1),
        "bad not counted": _got([right], damaged=1),
        "shard not counted": _got([right], {"bad_image": ["k2"]}),
        "other caption": _got([(*right[:2], np.asarray(tokens("a blue dog")), 3)], {"bad_image": ["k2"]}, damaged=1),
        "other pixels": _got([("k1", 255 - pixels, *right[2:])], {"bad_image": ["k2"]}, damaged=1),
        "other label": _got([(*right[:3], -1)], {"bad_image": ["k2"]}, damaged=1),
        "row unaccounted": _got([right], {"bad_image": ["k2"]}, damaged=1, seen=3),
    }
    for how, got in wrong.items():
        assert check(case, got, tokens), how
