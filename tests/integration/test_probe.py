"""`raylpclip probe` and `raylpclip eval` end to end on Ray: features once, LP-CLIP rounds and the
supervised reference on Ray Train, classifier directories, the robustness table; and proof that
LP-CLIP never reads the true labels (poisoning them changes the supervised probe only); and a probe
worker SIGKILLed mid-training is restarted and trains bit-identical heads."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raylpclip.commands.evaluate import cmd_eval
from raylpclip.commands.probe import ProbeConfig
from raylpclip.config import load_config
from raylpclip.methods.lpclip_config import LPCLIPConfig
from raylpclip.models.classifier import load_classifier, load_encoder, zeroshot_head
from raylpclip.runtime.train import probe_driver as probe_module
from raylpclip.runtime.train.probe_driver import run_probe, train_probes
from raylpclip.runtime.train.probe_worker import probe_worker
from tests.drills.worker_kills import TraceRecords, kill_worker_when

pytestmark = pytest.mark.usefixtures("ray_session")

SMALL_EVAL = ["robustness.corruptions=[gaussian_noise,contrast]", "robustness.severities=[1,5]",
              "robustness.max_samples=72", "inference.batch_size=128", "ray.num_cpus=8"]


@pytest.fixture(scope="module")
def probe_run(synthetic_shards, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    cfg = load_config(ProbeConfig, None, [
        f"model={tiny_clip_dir}", f"data.train={synthetic_shards['webdataset']}", f"data.eval={synthetic_shards['eval']}",
        f"output_dir={out}", "name=lp", "max_train_samples=300", "lpclip.epochs=2", "lpclip.batch_size=64",
        "train.num_workers=2", "data.decode_concurrency=1", *SMALL_EVAL])
    return cfg, run_probe(cfg)


def test_probe_writes_classifiers_features_and_table(probe_run, tiny_clip_dir, classnames):
    cfg, summary = probe_run
    assert set(summary["classifiers"]) == {"zeroshot", "lpclip-r1", "lpclip-r2", "supervised"}
    assert summary["train_samples"] == 300 and summary["num_classes"] == len(classnames) == 36
    teacher = load_classifier(summary["classifiers"]["zeroshot"])
    tower, tokenizer = load_encoder(tiny_clip_dir)
    expected = zeroshot_head(tower, tokenizer, classnames, cfg.eval.templates)
    torch.testing.assert_close(teacher.head.weight, expected.weight)  # the teacher is the model's own zero-shot head
    assert load_classifier(summary["classifiers"]["lpclip-r2"]).encoder == str(tiny_clip_dir.resolve())
    features = pq.read_table(cfg.run_dir / "features" / "train")
    assert features.num_rows == 300 and {"feat_weak", "feat_strong", "logits_weak"} <= set(features.column_names)
    with open(cfg.run_dir / "eval" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 5  # 4 classifiers x (clean + 2 corruptions x 2 severities)
    table = summary["eval"]["table"]
    assert set(table["lpclip-r1"]) >= {"clean_acc1", "corrupted_acc1", "clean_ece", "corrupted_nll", "clean_auroc"}
    assert all(0.0 <= table[n]["clean_acc1"] <= 1.0 for n in table)
    for png in ("accuracy_vs_severity.png", "reliability.png", "corruptions.png"):
        assert (cfg.run_dir / "eval" / png).stat().st_size > 0


@pytest.fixture(scope="module")
def probe_setup(probe_run):
    """The probe run's config, features and zero-shot weights, and the LP-CLIP settings of the runs below:
    enough epochs that a training outlasts a worker kill (a few seconds)."""
    cfg, _ = probe_run
    tower, tokenizer = load_encoder(cfg.model)
    weights = zeroshot_head(tower, tokenizer, load_classifier(cfg.run_dir / "classifiers" / "zeroshot").classnames,
                            cfg.eval.templates, logit_scale=1.0).weight.detach()
    lp = dataclasses.replace(LPCLIPConfig(**dataclasses.asdict(cfg.lpclip)), logit_scale=10.0, epochs=300)
    return cfg, cfg.run_dir / "features" / "train", weights, lp


def _train(setup, tmp_path: Path, name: str, features: Path | None = None):
    """train_probes on 1 worker (the rows a worker gets then do not depend on how Ray Data splits them),
    with the worker's pid marker in tmp_path/<name>, written once its features are loaded."""
    cfg, default_features, weights, lp = setup
    marked = functools.partial(probe_worker, trace_dir=str(tmp_path / name))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe_module, "probe_worker", marked)
        one = dataclasses.replace(cfg, output_dir=str(tmp_path), name=name,
                                  train=dataclasses.replace(cfg.train, num_workers=1, max_failures=1))
        start = time.time()
        heads = train_probes(one, features or default_features, weights, lp, supervised=True)
    return heads, TraceRecords.read(tmp_path / name).workers, start, time.time()


@pytest.fixture(scope="module")
def uninterrupted(probe_setup, tmp_path_factory):
    """The probes trained on the true features without a fault: the reference of both tests below."""
    return _train(probe_setup, tmp_path_factory.mktemp("uninterrupted"), "uninterrupted")


def test_lpclip_never_reads_labels(probe_setup, uninterrupted, tmp_path):
    """The same features with every label replaced by a wrong one: LP-CLIP's probes are bit-identical,
    the supervised probe is not (so the poisoned labels did reach the workers)."""
    _, features, _, _ = probe_setup
    table = pq.read_table(features)
    labels = table.column("label").to_numpy()
    poisoned = table.set_column(table.column_names.index("label"), "label", pa.array((labels + 1) % 36))
    (tmp_path / "poisoned-features").mkdir()
    pq.write_table(poisoned, tmp_path / "poisoned-features" / "part.parquet")
    true = uninterrupted[0]
    bad = _train(probe_setup, tmp_path, "poisoned", tmp_path / "poisoned-features")[0]
    for name in ("lpclip-r1", "lpclip-r2"):
        assert torch.equal(true[name].weight, bad[name].weight) and torch.equal(true[name].bias, bad[name].bias)
    assert not torch.equal(true["supervised"].weight, bad["supervised"].weight)


@pytest.mark.slow  # ~1 min; the pretraining worker-kill drill runs by default (test_faults.py)
def test_killed_probe_worker_restarts_and_trains_identical_heads(probe_setup, uninterrupted, tmp_path):
    """The probe training keeps no mid-run checkpoint: a SIGKILLed worker makes Ray Train (max_failures=1)
    start it over on the persisted features. Rows sorted by image_id and a seeded order make the retry
    train exactly what an uninterrupted run trains: bit-identical heads."""
    reference, ref_workers, ref_start, ref_end = uninterrupted
    assert len(ref_workers) == 1  # no restart without a fault

    killer = kill_worker_when(tmp_path / "killed", rank=0, when=lambda: True, timeout=300)
    heads, workers, start, end = _train(probe_setup, tmp_path, "killed")
    killer.join(timeout=5)
    pids = [w["pid"] for w in workers]
    # The first worker was killed once its features were in memory; a second process started over.
    assert killer.killed is not None and len(pids) == 2 and pids[0] == killer.killed and pids[1] != pids[0], pids
    assert set(heads) == set(reference) == {"lpclip-r1", "lpclip-r2", "supervised"}
    for name in reference:
        assert torch.equal(heads[name].weight, reference[name].weight), name
        assert torch.equal(heads[name].bias, reference[name].bias), name
    print(f"probe worker {pids[0]} killed after loading features, restarted as {pids[1]}: heads bit-identical; "
          f"uninterrupted {ref_end - ref_start:.1f}s ({ref_end - ref_workers[0]['time']:.1f}s after the features "
          f"were loaded), with the kill {end - start:.1f}s")


def test_eval_command_mixes_classifier_dirs_and_bare_models(probe_run, tiny_clip_dir, synthetic_shards, tmp_path):
    cfg, summary = probe_run
    path = cmd_eval([f"classifiers=[r1={summary['classifiers']['lpclip-r1']},zs={tiny_clip_dir}]",
                     f"data.eval={synthetic_shards['eval']}", f"output_dir={tmp_path}", "name=ev",
                     f"eval.templates={json.dumps(cfg.eval.templates)}", *SMALL_EVAL])
    result = json.loads(path.read_text())
    assert set(result["table"]) == {"r1", "zs"}
    # The bare model evaluated zero-shot is the probe run's teacher: same numbers on the same images.
    with open(cfg.run_dir / "eval" / "table.csv") as f:
        teacher = next(r for r in csv.DictReader(f) if r["classifier"] == "zeroshot")
    assert result["table"]["zs"]["clean_acc1"] == pytest.approx(float(teacher["clean_acc1"]))
    assert result["table"]["r1"]["clean_acc1"] == pytest.approx(summary["eval"]["table"]["lpclip-r1"]["clean_acc1"])


def test_eval_retrieval_on_captions(tiny_clip_dir, synthetic_shards, tmp_path):
    path = cmd_eval([f"classifiers=[{tiny_clip_dir}]", f"data.eval={synthetic_shards['captions']}",
                     f"output_dir={tmp_path}", "name=ret", *SMALL_EVAL])
    result = json.loads(path.read_text())
    assert result["mode"] == "retrieval" and result["test_samples"] == 72
    row = result["table"]["model"]
    for key in ("clean_image_retrieval_recall@5", "corrupted_text_retrieval_recall@10"):
        assert 0.0 <= row[key] <= 1.0
    assert row["clean_image_retrieval_recall@10"] >= row["clean_image_retrieval_recall@1"]
