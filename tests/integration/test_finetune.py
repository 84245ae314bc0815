"""`raylpclip finetune` end to end on the shared local Ray instance: CAR-FT on 2 workers over labelled
synthetic shards mixed with caption-only ones (skipped and counted), classifier directories that load
back, WiSE-FT mixtures that are what they claim, a re-run that resumes instead of retraining, and a
Train worker SIGKILLed mid-run that is replaced and resumes from the latest registered checkpoint."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from ray.util.state import list_actors

from raylpclip.cli import main
from raylpclip.commands.finetune import FinetuneConfig
from raylpclip.config import load_config
from raylpclip.engine.checkpoint_state import load_state
from raylpclip.models.classifier import load_classifier, load_encoder
from tests.drills.checkpoint_damage import persisted_steps

pytestmark = pytest.mark.ray

STEPS = 4


def _overrides(shards, tiny_clip_dir, out) -> list[str]:
    return [
        f"model={tiny_clip_dir}", f"output_dir={out}", "name=ft", "method=carft", "carft.kl_weight=2.0",
        f"data.sources=[{{path: '{shards['webdataset']}', weight: 0.75}}, {{path: '{shards['captions']}', weight: 0.25}}]",
        f"data.eval={shards['eval']}", "data.image_size=32", "data.eval_max_samples=200", "data.decode_batch_size=100",
        "carft.templates=['a photo of a {}.', 'a blurry sketch of a {}.', 'a {} in the dark.']",
        f"train.steps={STEPS}", "train.batch_size=16", "train.checkpoint_every=2", "train.eval_every=2",
        "train.log_every=1", "optim.lr=1e-3", "optim.warmup_steps=0", "wise_alphas=[0.5]",
    ]


def _encoder_state(path) -> dict[str, torch.Tensor]:
    tower, _ = load_encoder(path)
    return {k: v.clone() for k, v in tower.clip.vision_model.state_dict().items()}


def test_carft_run_writes_loadable_classifiers_and_resumes(ray_session, synthetic_shards, tiny_clip_dir, tmp_path,
                                                           classnames, capsys):
    overrides = _overrides(synthetic_shards, tiny_clip_dir, tmp_path)
    assert main(["finetune", *overrides]) == 0
    out = capsys.readouterr().out
    summary_path = tmp_path / "ft" / "summary.json"
    assert out.strip().splitlines()[-1] == str(summary_path.resolve())  # the summary's path, last
    summary = json.loads(summary_path.read_text())
    assert (summary["step"], summary["samples_seen"], summary["method"]) == (STEPS, STEPS * 16, "carft")
    assert summary["skipped"].get("no_label", 0) > 0  # the caption-only source's rows were dropped and counted
    assert set(summary["classifiers"]) == {"zeroshot", "carft", "wise-carft-0.5"}
    assert "eval acc1" in out and " kl " in out  # worker progress: mid-run eval, the context KL

    loaded = {name: load_classifier(path) for name, path in summary["classifiers"].items()}
    assert [loaded[n].kind for n in ("zeroshot", "carft", "wise-carft-0.5")] == ["zeroshot", "carft", "wise-ft"]
    assert all(c.classnames == classnames for c in loaded.values())
    assert loaded["zeroshot"].encoder == str(tiny_clip_dir.resolve())  # the origin is referenced, not copied
    assert loaded["wise-carft-0.5"].info["alpha"] == 0.5 and loaded["carft"].info["kl_weight"] == 2.0
    for name in loaded:
        m = summary["id"][name]
        assert 0.0 <= m["acc1"] <= m["acc5"] <= 1.0 and m["eval_samples"] == 200 and m["ece"] >= 0
        assert summary[f"{name}_acc1"] == m["acc1"]

    # The fine-tuned directory holds exactly the checkpoint's weights; WiSE-FT at 0.5 is the midpoint.
    theta_ft = load_state(summary["checkpoint"])["task"]["model"]
    ft, origin, wise = (_encoder_state(loaded[n].encoder) for n in ("carft", "zeroshot", "wise-carft-0.5"))
    moved = 0
    for key, value in ft.items():
        assert torch.equal(value, theta_ft[f"encoder.vision.{key}"]), key
        torch.testing.assert_close(wise[key], (origin[key] + value) / 2)
        moved += not torch.equal(value, origin[key])
    assert moved > 10
    assert torch.equal(loaded["carft"].head.weight, theta_ft["head.weight"])
    torch.testing.assert_close(loaded["wise-carft-0.5"].head.weight,
                               (loaded["zeroshot"].head.weight + theta_ft["head.weight"]) / 2)

    # Same name again: Ray Train hands back the finished run's checkpoint, nothing retrains.
    from raylpclip.runtime.train.finetune_driver import run_finetune

    again = run_finetune(load_config(FinetuneConfig, None, overrides))
    assert again["step"] == STEPS and again["checkpoint"] == summary["checkpoint"]
    assert again["id"]["carft"]["acc1"] == summary["id"]["carft"]["acc1"]

    # A worker lost after the final checkpoint reached storage but before Ray Train registered it (CI once
    # met it): the re-run resumes at the last step and registers that state anew with its figures, so the
    # result is the final state and not the older registered checkpoint.
    snapshot = tmp_path / "ft" / "checkpoint_manager_snapshot.json"
    ray_view = json.loads(snapshot.read_text())
    final = Path(summary["checkpoint"]).name
    ray_view["checkpoint_results"] = [r for r in ray_view["checkpoint_results"] if r["checkpoint_dir_name"] != final]
    ray_view["checkpoint_report_indices"] = ray_view["checkpoint_report_indices"][:len(ray_view["checkpoint_results"])]
    ray_view["latest_checkpoint_result"] = ray_view["checkpoint_results"][-1]
    assert ray_view["latest_checkpoint_result"]["metrics"]["step"] < STEPS
    snapshot.write_text(json.dumps(ray_view))
    third = run_finetune(load_config(FinetuneConfig, None, overrides))
    assert (third["step"], third["loss"]) == (STEPS, summary["loss"]) and third["checkpoint"] != summary["checkpoint"]
    assert torch.equal(load_state(third["checkpoint"])["task"]["model"]["head.weight"], theta_ft["head.weight"])


def test_caption_only_shards_are_refused_before_ray_work(synthetic_shards, tiny_clip_dir, tmp_path, capsys):
    code = main(["finetune", f"model={tiny_clip_dir}", f"output_dir={tmp_path}", "data.image_size=32",
                 f"data.train={synthetic_shards['captions']}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "carry no class labels" in err and str(synthetic_shards["captions"]) in err


def test_image_size_must_match_the_model(synthetic_shards, tiny_clip_dir, tmp_path, capsys):
    code = main(["finetune", f"model={tiny_clip_dir}", f"output_dir={tmp_path}", "data.image_size=64",
                 f"data.train={synthetic_shards['webdataset']}"])
    assert code == 2 and "'data.image_size': got 64 but the model" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a worker killed mid-run

# The kill lands once step KILL_EVERY's checkpoint is whole in storage; the steps after it keep the run
# going long after that on any machine (in CI 12 steps once ended before the kill landed).
KILL_STEPS, KILL_EVERY = 40, 4


def _our_actors(*filters) -> list:
    """Ray Train worker actors of the Ray instance this process started. The state API must be given
    that instance's address: without one it joins the newest instance on the machine, which may be
    another test run's."""
    return list_actors(address=ray.get_runtime_context().gcs_address,
                       filters=[("class_name", "=", "RayTrainWorker"), *filters])


def _train_worker_pids() -> set[int]:
    """Pids of live Train workers, and only processes this test's own Ray instance started (its
    descendants): never kill what belongs to another run on the machine."""
    import psutil  # vendored by Ray: importable once ray is

    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    return {a.pid for a in _our_actors(("state", "=", "ALIVE")) if a.pid in ours}


def _resumed_lines(name: str) -> list[tuple[int, int]]:
    """(pid, step) of each "resumed NAME at step N" line a worker printed, read from Ray's worker log
    files (worker-<id>-<job>-<pid>.out): the console shows raylpclip's lines without Ray's pid prefix."""
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    found = []
    for path in logs.glob("worker-*.out"):
        for step in re.findall(rf"\[raylpclip\] resumed {re.escape(name)} at step (\d+)", path.read_text(errors="replace")):
            found.append((int(path.stem.rsplit("-", 1)[1]), int(step)))
    return found


def _kill_one_worker_after_checkpoint(run_dir, at_least: int, *, timeout: float = 300):
    """In the background: once a checkpoint of step >= `at_least` is whole in storage, SIGKILL one Train
    worker, then wait for the replacement group. The thread's `.record` says what happened."""
    record: dict = {}

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            step = max(persisted_steps(run_dir), default=None)
            pids = _train_worker_pids() if step is not None and step >= at_least else set()
            if pids:
                record.update(killed=max(pids), old=pids, checkpoint_step=step)
                os.kill(record["killed"], signal.SIGKILL)
                break
            time.sleep(0.2)
        while "killed" in record and time.monotonic() < deadline:
            new = _train_worker_pids() - record["old"]
            if new:
                record["replacements"] = new
                return
            time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True, name="kill-finetune-worker")
    thread.record = record
    thread.start()
    return thread


@pytest.mark.slow  # ~1 min; the pretraining worker-kill drill runs by default (test_faults.py)
def test_killed_worker_is_replaced_and_finetuning_resumes(ray_session, synthetic_shards, tiny_clip_dir, tmp_path):
    overrides = [o for o in _overrides(synthetic_shards, tiny_clip_dir, tmp_path) if not o.startswith("data.eval=")]
    overrides += ["name=ft-kill", f"train.steps={KILL_STEPS}", f"train.checkpoint_every={KILL_EVERY}",
                  f"train.log_every={KILL_EVERY}", "train.eval_every=0", "train.max_failures=1", "wise_alphas=[]"]
    killer = _kill_one_worker_after_checkpoint(tmp_path / "ft-kill", KILL_EVERY)
    assert main(["finetune", *overrides]) == 0
    killer.join(timeout=60)
    record = killer.record
    assert "killed" in record, "no Train worker was killed"
    summary = json.loads((tmp_path / "ft-kill" / "summary.json").read_text())
    assert (summary["step"], summary["samples_seen"]) == (KILL_STEPS, KILL_STEPS * 16)
    assert math.isfinite(summary["loss"]) and math.isfinite(summary["ce_loss"])

    # The killed process is dead; a new worker group (other pids) took over and resumed from the newest
    # checkpoint in storage at the kill (or a newer one), not from step 0.
    killed = _our_actors(("pid", "=", record["killed"]))
    assert killed and all(a.state == "DEAD" for a in killed)
    assert record.get("replacements") and record["killed"] not in record["replacements"]
    for _ in range(20):  # Ray writes a worker's output to its log file with a little delay
        resumed = _resumed_lines("ft-kill")
        if resumed:
            break
        time.sleep(0.5)
    assert len(resumed) == 1, resumed
    pid, step = resumed[0]
    assert pid not in record["old"]  # a process of the replacement group (its rank 0) resumed
    assert step >= record["checkpoint_step"] >= KILL_EVERY and step % KILL_EVERY == 0 and step < KILL_STEPS
    print(f"killed worker pid {record['killed']} after checkpoint {record['checkpoint_step']}; "
          f"resumed at step {step} on pid {pid}; final step {summary['step']} loss {summary['loss']:.4f}")
