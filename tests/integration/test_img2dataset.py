"""The real img2dataset in the suite: it downloads a URL list from a loopback HTTP server (real JPEGs,
URLs that answer 404, files that are not images) into webdataset and parquet shards, and raylpclip
trains on what it wrote: the `_stats.json` counts give the dataset size, the failed downloads are
absent from the tars and are null-image rows of the parquet shards (skipped and counted)."""

from __future__ import annotations

import csv
import json
import os
import signal
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylpclip.config import PretrainConfig, load_config
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.runtime.train.pretrain_driver import run_pretrain

# img2dataset imports albumentations, whose import asks PyPI for a newer version (2 s timeout) unless
# this is set; img2dataset's worker processes are spawned, so they inherit it from here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
img2dataset = pytest.importorskip("img2dataset")  # not in the `test` extra (README, "Tests"): installed by hand

pytestmark = pytest.mark.ray

IMAGES = 24
PER_SHARD = 16  # the URL list's 31 rows make two shards: 16 + 15
NOT_IMAGES = {"notes.txt": b"not an image\n", "page.html": b"<html><body>no image here</body></html>\n",
              "broken.jpg": b"this file only pretends to be a JPEG\n"}
MISSING = 4  # URLs that answer 404


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request on stderr
        pass


@pytest.fixture(scope="module")
def url_list(tmp_path_factory):
    """A CSV (url, caption) of IMAGES JPEGs (96 px, so that img2dataset resizes them), MISSING 404s and
    the NOT_IMAGES files, interleaved, served by a threaded http.server on 127.0.0.1 for the module; and
    each row's expected outcome, in order."""
    root = tmp_path_factory.mktemp("site")
    (root / "img").mkdir()
    rows, outcomes = [], []
    for i, sample in enumerate(generate_samples(IMAGES, spec=SyntheticSpec(image_size=96), seed=21)):
        (root / "img" / f"{i:02d}.jpg").write_bytes(sample.jpg)
        rows.append((f"img/{i:02d}.jpg", sample.caption))
        outcomes.append("success")
    for name, data in NOT_IMAGES.items():
        (root / name).write_bytes(data)
    missing = [(f"missing/{i}.jpg", "failed_to_download") for i in range(MISSING)]
    not_images = [(name, "failed_to_resize") for name in NOT_IMAGES]
    failures = [row for pair in zip(missing, not_images + [None]) for row in pair if row]  # alternating
    for k, (path, outcome) in enumerate(failures):  # rows 2, 6, 10, ...: both kinds in both shards
        rows.insert(4 * k + 2, (path, f"a caption whose image never arrives, number {k}"))
        outcomes.insert(4 * k + 2, outcome)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="img2dataset-test-http", daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        csv_path = root / "urls.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["url", "caption"])
            writer.writerows((f"{base}/{path}", caption) for path, caption in rows)
        yield csv_path, outcomes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _download(csv_path: Path, out: Path, fmt: str, monkeypatch) -> None:
    """img2dataset's Python API, as small as it goes: one process, a few threads, 64 px."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy in the environment must not take loopback
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    sigint = signal.getsignal(signal.SIGINT)
    try:
        img2dataset.download(
            url_list=str(csv_path), input_format="csv", url_col="url", caption_col="caption",
            output_folder=str(out), output_format=fmt, image_size=64, processes_count=1, thread_count=4,
            number_sample_per_shard=PER_SHARD, distributor="multiprocessing", enable_wandb=False,
            timeout=10, retries=0,
        )
    finally:
        signal.signal(signal.SIGINT, sigint)  # download() installs its own Ctrl-C handler in this process


def _expected_stats(outcomes: list[str]) -> list[dict]:
    shards = [outcomes[i:i + PER_SHARD] for i in range(0, len(outcomes), PER_SHARD)]
    return [{"count": len(s), "successes": s.count("success"), "failed_to_download": s.count("failed_to_download"),
             "failed_to_resize": s.count("failed_to_resize")} for s in shards]


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_train_on_img2dataset_output(ray_session, url_list, tmp_path, monkeypatch, fmt):
    csv_path, outcomes = url_list
    out = tmp_path / "shards"
    _download(csv_path, out, fmt, monkeypatch)

    expected = _expected_stats(outcomes)
    assert [e["failed_to_download"] for e in expected] == [2, 2] and [e["failed_to_resize"] for e in expected] == [2, 1]
    stats = [json.loads((out / f"{i:05d}_stats.json").read_text()) for i in range(len(expected))]
    assert [{k: s[k] for k in expected[0]} for s in stats] == expected
    errors = {message for s in stats for message in s["status_dict"]}
    assert any("404" in message for message in errors), errors
    successes = sum(s["successes"] for s in stats)
    failures = len(outcomes) - successes
    assert (successes, failures) == (IMAGES, MISSING + len(NOT_IMAGES))

    if fmt == "webdataset":  # failed rows are only in the metadata parquet beside each tar
        names = []
        for shard in sorted(out.glob("*.tar")):
            with tarfile.open(shard) as tar:
                names += tar.getnames()
        assert len(list(out.glob("*.tar"))) == 2 and len(names) == 3 * successes
        assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
    else:  # every row is in the shard, a failed one with a null image; the caption column is `caption`, not `txt`
        table = pa.concat_tables(pq.read_table(f) for f in sorted(out.glob("*.parquet")))
        assert "txt" not in table.column_names and table.num_rows == len(outcomes)
        rows = sorted(table.select(["key", "jpg", "caption", "status", "width", "height"]).to_pylist(),
                      key=lambda r: r["key"])  # written as downloads finish; keys follow the URL list
        assert [r["status"] == "success" for r in rows] == [o == "success" for o in outcomes]
        assert all((r["jpg"] is None) == (r["status"] != "success") and r["caption"] for r in rows)
        assert all((r["width"], r["height"]) == (64, 64) for r in rows if r["status"] == "success")

    # Train on it, evaluated by retrieval on the same shards (no labels there: captions only).
    summary = run_pretrain(load_config(PretrainConfig, None, [
        f"data.train={out}", f"data.eval={out}", f"output_dir={tmp_path / 'runs'}", f"name=img2dataset-{fmt}",
        "train.num_workers=1", "train.steps=6", "train.batch_size=8", "train.checkpoint_every=6",
        "train.log_every=3", "optim.warmup_steps=2", "model.vocab_size=300", "data.shuffle_buffer=16",
        "data.decode_concurrency=1",
    ]))
    assert summary["step"] == 6 and summary["samples_seen"] == 6 * 8
    assert summary["train_samples"] == successes  # from the _stats.json files
    assert summary["num_classes"] == 0 and summary["eval_images"] == successes
    assert 0.0 <= summary["image_retrieval_recall@1"] <= summary["image_retrieval_recall@10"] <= 1.0
    assert Path(summary["model_dir"]).is_dir()
    skipped = summary["skipped"]
    if fmt == "webdataset":
        assert skipped == {}
    else:  # each null-image row is skipped as bad_image in every pass over it (two epochs and the eval here)
        assert set(skipped) == {"bad_image"}
        sightings = summary.get("skipped_sightings", skipped)  # `skipped` counted sightings before distinct samples
        assert sightings["bad_image"] >= failures and sightings["bad_image"] % failures == 0, summary
        if "skipped_sightings" in summary:  # distinct samples, each counted once (runtime/cluster/counters.py)
            assert skipped["bad_image"] == failures
