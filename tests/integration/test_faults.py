"""Faults injected into short pretraining runs, each compared with one uninterrupted reference run:
a Train worker SIGKILLed, a node removed, the driver SIGKILLed and the command re-run, the newest
checkpoint truncated, S3 run storage answering 503 SlowDown. Every run records the samples of each
step (the workers' trace, raylpclip/runtime/train/worker_trace.py), so "samples replayed" counts trainings on a sample already trained on
in the same epoch. The session writes the fault table (runs/faults/fault_table.{md,json}) and prints it (fault_runs.py).

One epoch is 1500 samples and a run trains 40 steps of 32 = 1280: an uninterrupted run sees no
sample twice, and a resumed run may repeat only what it trained after its last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import s3fs
import torch
from transformers import CLIPModel

from raylpclip.config import PretrainConfig, load_config
from raylpclip.data.tokenization import tokenize
from raylpclip.engine.checkpoint_state import load_state
from raylpclip.models.bpe_tokenizer import load_tokenizer
from raylpclip.models.clip import ClipTower
from raylpclip.models.tower_factory import build_tower
from tests.drills.checkpoint_damage import checkpoint_dirs, persisted_steps, truncate
from tests.drills.driver_kills import run_until
from tests.drills.fault_proxy import FaultProxy, first_try_of
from tests.drills.worker_kills import TRACE_ENV, TraceRecords, kill_worker_when
from tests.integration.fault_runs import BATCH, EVERY, INTERVAL, STEPS, assert_close_to_reference, overrides, run_traced

pytestmark = pytest.mark.ray


def test_killed_worker_is_replaced_and_training_continues(reference, synthetic_shards, tokenizer_dir, tmp_path,
                                                          monkeypatch, fault_table):
    probe = tmp_path / "probe"
    # SIGKILL rank 1 as soon as checkpoint 10 is in storage (uploads may finish some steps later).
    killer = kill_worker_when(probe, rank=1, when=lambda: 10 in persisted_steps(tmp_path / "worker-kill"))
    summary, records = run_traced(overrides(synthetic_shards, tokenizer_dir, tmp_path, "worker-kill", "train.max_failures=2"),
                            probe, monkeypatch)
    killer.join(timeout=5)
    assert killer.killed is not None, "the worker was never killed"
    first = {w["pid"] for w in records.workers if w["start_step"] == 0}
    killed_at = max(b["step"] for b in records.batches if b["pid"] in first)  # the step in flight
    restarts = [w for w in records.workers if w["start_step"] > 0]
    resumed = {w["start_step"] for w in restarts}
    assert {w["rank"] for w in restarts} == {0, 1} and len(resumed) == 1  # both ranks from one checkpoint
    resumed_from = resumed.pop()
    assert resumed_from >= 10 and resumed_from < killed_at  # the newest checkpoint in storage, not step 0
    assert killer.killed not in {w["pid"] for w in restarts}  # a new process replaced the killed one
    assert_close_to_reference(summary, reference)
    # replayed: only what was trained between that checkpoint and the kill (the rest of the epoch was skipped)
    assert records.replayed() <= min(INTERVAL, (killed_at - resumed_from) * BATCH)
    fault_table.add(f"worker SIGKILL (rank 1, at step {killed_at})", summary, reference["summary"], records,
                    resumed_from=resumed_from)


def test_killed_driver_rerun_resumes_checkpoint_and_data_position(reference, synthetic_shards, tokenizer_dir,
                                                                  tmp_path, monkeypatch, fault_table):
    probe = tmp_path / "probe"
    cfg = overrides(synthetic_shards, tokenizer_dir, tmp_path, "driver-kill")
    env = dict(os.environ, **{TRACE_ENV: str(probe)})
    # The whole process group (driver, its Ray instance, workers) dies as soon as checkpoint 20 is in
    # storage, a few steps before checkpoint 30.
    run_until([sys.executable, "-m", "raylpclip", "pretrain", *cfg, "ray.num_cpus=6"],
              until=lambda: 20 in persisted_steps(tmp_path / "driver-kill"), env=env, timeout=900)
    killed_at = TraceRecords.read(probe).max_step()
    assert 20 < killed_at < 30
    summary, records = run_traced(cfg, probe, monkeypatch)  # the same command again, same name: resumes
    resumed = {w["start_step"] for w in records.workers if w["start_step"] > 0}
    assert resumed == {20}
    assert_close_to_reference(summary, reference)
    replayed = records.replayed()
    # Without the data position the rerun would start the epoch over and repeat all 640 samples of
    # steps 1-20 as well; with it only the steps after checkpoint 20 come again.
    assert replayed <= min(INTERVAL, (killed_at - 20) * BATCH)
    assert len(records.seen()) >= STEPS * BATCH - INTERVAL
    fault_table.add(f"driver SIGKILL (after step {killed_at}), same command re-run", summary, reference["summary"],
                    records, resumed_from=20)
    _exported_model_matches_checkpoint(summary, cfg)


def _exported_model_matches_checkpoint(summary: dict, cfg_overrides: list[str]) -> None:
    """The resumed run's exported Hugging Face model computes what its final checkpoint computes."""
    cfg = load_config(PretrainConfig, None, cfg_overrides)
    tokenizer = load_tokenizer(summary["model_dir"])
    reference = build_tower(cfg.model, tokenizer=tokenizer)
    reference.load_state_dict(load_state(summary["checkpoint"])["task"]["model"])
    exported = ClipTower(CLIPModel.from_pretrained(summary["model_dir"], local_files_only=True))
    tokens = tokenize(tokenizer, ["a small red circle", "a blue star"], context_length=cfg.data.context_length)
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    images = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size)
    reference.eval(), exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported.encode_text(ids, mask), reference.encode_text(ids, mask))
        torch.testing.assert_close(exported.encode_image(images), reference.encode_image(images))


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(reference, tmp_path, synthetic_shards, tokenizer_dir,
                                                               monkeypatch, capfd, fault_table):
    run_dir = tmp_path / "ref"
    shutil.copytree(reference["run_dir"], run_dir)  # the finished reference run, as if its last write was cut short
    newest = checkpoint_dirs(run_dir)[-1]
    truncate(newest / "state.pt")
    probe = tmp_path / "probe"
    summary, records = run_traced(overrides(synthetic_shards, tokenizer_dir, tmp_path, "ref"), probe, monkeypatch)
    out = capfd.readouterr().out
    assert f"unusable checkpoints ({newest.name}: state.pt has" in out and "resumes from" in out
    assert {w["start_step"] for w in records.workers} == {30}  # fell back from 40 to 30 and trained 31..40
    assert records.max_step() == STEPS and records.replayed() == 0  # alone, it repeats nothing
    # the 10 steps it trained are samples the reference had not used up to step 30
    before = {p for b in reference["records"].batches if b["step"] <= 30 for p in b["positions"]}
    assert not before & set(records.seen())
    assert_close_to_reference(summary, reference)
    fault_table.add("newest checkpoint truncated (state.pt cut in half)", summary, reference["summary"], records,
                    resumed_from=30)


@pytest.fixture
def runs_bucket(s3_server) -> str:
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server}).mkdir("runs")
    return "s3://runs/faults"


def test_s3_storage_with_transient_errors(reference, s3_server, runs_bucket, synthetic_shards, tokenizer_dir, tmp_path,
                                          monkeypatch, fault_table):
    with FaultProxy(s3_server, fail=first_try_of(r"/state\.pt$")) as proxy:
        cfg = overrides(synthetic_shards, tokenizer_dir, tmp_path, "s3-errors", f"ray.storage_path={runs_bucket}",
                        f"data.s3.endpoint_url={proxy.url}")
        summary, records = run_traced(cfg, tmp_path / "probe", monkeypatch)
    assert proxy.total_injected >= STEPS // EVERY  # every checkpoint's first upload of state.pt failed
    assert summary["storage_retries"] == proxy.total_injected  # each one retried, each retry counted
    assert summary["checkpoint"].startswith("runs/faults/s3-errors/checkpoint_")
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server})
    stored = fs.ls(f"runs/faults/s3-errors/{summary['checkpoint'].rsplit('/', 1)[1]}")
    assert {p.rsplit("/", 1)[1] for p in stored} >= {"state.pt", "meta.json", "manifest.json", "data_position.json"}
    assert_close_to_reference(summary, reference)
    fault_table.add(f"S3 storage, {proxy.total_injected} PUTs answered 503 SlowDown", summary, reference["summary"],
                    records, bound=0)
    assert records.replayed() == 0


@pytest.mark.slow  # ~2.5 min: its own two-node cluster; `pytest -m slow tests/integration/test_faults.py` adds its row
def test_node_removed_mid_run_finishes_on_the_remaining_node(reference, synthetic_shards, tokenizer_dir, tmp_path,
                                                             fault_table):
    """A head and a second node with one Train worker each (elastic 1-2 workers); the second node is
    removed once checkpoint 10 is in storage. Runs in a subprocess: it needs its own multi-node Ray cluster."""
    cfg = overrides(synthetic_shards, tokenizer_dir, tmp_path, "node-loss", "train.min_workers=1",
                    "train.max_failures=2", "data.decode_concurrency=1")
    result_path = tmp_path / "result.json"
    env = dict(os.environ, **{TRACE_ENV: str(tmp_path / "probe")})
    proc = subprocess.run([sys.executable, "-m", "tests.drills.node_drill", str(result_path), "10", *cfg],
                          capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and result_path.is_file(), out[-6000:]
    result = json.loads(result_path.read_text())
    starts = result["worker_starts"]
    assert {w["world"] for w in starts if w["start_step"] == 0} == {2}
    after = [w for w in starts if w["start_step"] > 0]
    resumed = {w["start_step"] for w in after}
    assert after and {w["world"] for w in after} == {1} and len(resumed) == 1
    resumed_from = resumed.pop()
    assert resumed_from >= 10  # the newest checkpoint in storage when the node went
    assert f"resumed node-loss at step {resumed_from}" in out and "with 1 workers" in out
    summary = result["summary"]
    assert_close_to_reference(summary, reference)
    records = TraceRecords.read(tmp_path / "probe")
    assert records.replayed() <= INTERVAL
    fault_table.add(f"node removed (at step {result['removed_after_step']}), elastic 2 -> 1 workers", summary,
                    reference["summary"], records, resumed_from=resumed_from)


def test_lost_counter_costs_its_counts_not_the_run(ray_session, capfd):
    """The run's skip/retry counter lives on the head node; if it is lost anyway, a report gets no
    counts and a warning instead of an error that would fail a training that can go on."""
    from raylpclip.runtime.cluster import counters

    counter = counters.new_counter()
    counter.add.remote({"corrupt_image": 2})
    assert counters.totals(counter) == {"corrupt_image": 2}
    ray_session.kill(counter)
    deadline = time.monotonic() + 30  # ray.kill returns before the actor is gone
    while (totals := counters.totals(counter)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert totals == {}
    assert "the skip/retry counter is gone (ActorDiedError)" in capfd.readouterr().out
