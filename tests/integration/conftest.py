"""Small synthetic shard sets shared by the Ray integration tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raylpclip.data.sample import Sample
from raylpclip.data.shard_writer import write_shards
from raylpclip.data.synthetic import SyntheticSpec, class_names, generate_samples

SPEC = SyntheticSpec()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> dict[str, Path]:
    """Train shards in both img2dataset formats, and a labelled eval set covering all 36 classes."""
    root = tmp_path_factory.mktemp("shards")
    write_shards(generate_samples(1500, spec=SPEC, seed=0), str(root / "wds"), samples_per_shard=500)
    write_shards(generate_samples(1500, spec=SPEC, seed=0), str(root / "parquet"), fmt="parquet", samples_per_shard=500)
    write_shards(generate_samples(720, spec=SPEC, seed=9), str(root / "eval"), samples_per_shard=720)
    write_shards(_two_captions_each(generate_samples(120, spec=SPEC, seed=13)), str(root / "captions"),
                 samples_per_shard=240)
    return {"webdataset": root / "wds", "parquet": root / "parquet", "eval": root / "eval", "captions": root / "captions"}


def _two_captions_each(samples):
    """An unlabelled image-caption set like a captions CSV gives: two rows per image sharing `image_id`."""
    for i, s in enumerate(samples):
        for caption in (s.caption, f"a picture of a {s.meta['label_name']}."):
            yield Sample(key="", jpg=s.jpg, caption=caption, meta={"image_id": f"img{i}"})


@pytest.fixture(scope="session")
def classnames() -> list[str]:
    return class_names(SPEC)


def small_run(shards: dict[str, Path], out: Path, *, name: str, fmt: str = "webdataset", steps: int = 20) -> list[str]:
    """Overrides for a short 2-worker run on the synthetic shards."""
    return [
        f"data.train={shards[fmt]}", f"data.eval={shards['eval']}", f"output_dir={out}",
        f"name={name}", f"train.steps={steps}", "train.checkpoint_every=10", "train.log_every=5",
        "train.batch_size=32", "model.vocab_size=400", "data.eval_max_samples=720",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Child side of Popen: SIGTERM when the test process dies, so no server outlives a killed run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto_server) on 127.0.0.1 for the session; credentials are moto's dummies."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # answering, just not to a bare GET
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# The fault drills' shared fixtures (tests/integration/fault_runs.py says why they are session-wide).
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, synthetic_shards) -> Path:
    """One tokenizer for every fault run, so that losses compare (the same vocabulary and initial weights)."""
    from raylpclip.data.metadata import sample_captions
    from raylpclip.data.shard_files import resolve_shards
    from raylpclip.models.bpe_tokenizer import train_tokenizer

    files, fmt = resolve_shards(str(synthetic_shards["webdataset"]))
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(sample_captions(files, fmt=fmt, limit=1500), vocab_size=400, out_dir=str(out))
    return out


@pytest.fixture(scope="session")
def fault_table(request):
    from tests.integration.fault_runs import FaultTable

    table = FaultTable()
    yield table
    if not table.rows:
        return
    text = table.write()
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None:
        # Fixture teardown output is captured (and dropped for a passing test): print past the capture.
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line("")
            for line in text.splitlines():
                reporter.write_line(line)


@pytest.fixture(scope="session")
def reference(ray_session, synthetic_shards, tokenizer_dir, tmp_path_factory, fault_table):
    """The uninterrupted run every fault is compared with."""
    from tests.integration.fault_runs import BATCH, STEPS, overrides, run_traced

    out = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    try:
        summary, records = run_traced(overrides(synthetic_shards, tokenizer_dir, out, "ref"), out / "probe", mp)
    finally:
        mp.undo()
    assert summary["step"] == STEPS and records.replayed() == 0
    assert len(records.seen()) == STEPS * BATCH  # 1280 distinct samples of the 1500
    fault_table.add("none (reference)", summary, summary, records)
    return {"summary": summary, "records": records, "run_dir": out / "ref", "out": out}
