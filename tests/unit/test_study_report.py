"""A study's plan, claims and report from made-up cell results (no Ray): every cell's config is checked at
planning time, the claims come out as the numbers say, and the report has its sections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raylpclip.commands.study import StudyConfig
from raylpclip.config import ConfigError, load_config
from raylpclip.experiments.study_claims import decide
from raylpclip.experiments.study_plan import cells_of, plan_study
from raylpclip.experiments.study_report import design_status, write_report
from raylpclip.experiments.study_results import collect

SMALL = ["world.kind=procedural", "seeds=[0,1,2]", "sizes=[0.5,1.0]", "pretrain.train.steps=10",
         "pretrain.train.batch_size=16", "finetune.train.batch_size=16", "probe.lpclip.rounds=2"]


def _plan(tmp_path, *extra):
    cfg = load_config(StudyConfig, None, [*SMALL, f"output_dir={tmp_path}", "name=s", *extra])
    return plan_study(cfg, design_file="design.yaml")


def test_the_plan_has_every_cell_and_checks_their_configs(tmp_path):
    plan = _plan(tmp_path)
    kinds = [c.kind for c in plan.cells]
    assert kinds.count("pretrain") == 2 * 2 * 3 and kinds.count("headroom") == 2 * 3 and kinds.count("probe") == 3
    assert kinds.count("finetune") == 2 * 3 and kinds.count("eval") == 2 * 3 * 3
    psd = cells_of(plan.cells, "pretrain", method="psd", size=1.0, seed=1)[0]
    assert psd.config.psd.a_max == 0.5 and psd.config.train.seed == 1 and psd.config.data.shuffle_seed == 1
    assert psd.config.eval.retrieval and psd.config.train.steps == 10
    assert cells_of(plan.cells, "pretrain", method="clip", size=0.5, seed=0)[0].config.psd.a_max == 0.0
    probe = plan.cell("probe/lpclip-s1")
    assert probe.needs == [psd.id] and probe.config.model == str(psd.config.run_dir)
    evals = cells_of(plan.cells, "eval", group="finetune", seed=2, split="test-ood")[0]
    assert set(evals.needs) == {"finetune/ft-s2", "finetune/carft-s2"} and not evals.config.robustness.corruptions
    with pytest.raises(ConfigError, match="pretrain \\(clip\\).*psd.a_maxx"):
        _plan(tmp_path, "methods={clip: {psd.a_maxx: 0}, psd: {psd.a_max: 0.5}}")
    with pytest.raises(ConfigError, match="'seeds'"):
        load_config(StudyConfig, None, [*SMALL, "seeds=[0]"])


def _fake_results(plan, *, psd_gain: float, lpclip_gain: float, carft_ood: float, carft_id: float):
    rng = np.random.default_rng(0)
    for cell in plan.cells:
        run = cell.config.run_dir
        run.mkdir(parents=True, exist_ok=True)
        noise = float(rng.normal(0, 0.002))
        if cell.kind == "pretrain":
            size = cell.tags["size"]
            gain = psd_gain * size if cell.tags["method"] == "psd" else 0.0  # grows with data
            summary = {"acc1": 0.5 + 0.1 * size + gain + noise, "image_retrieval_recall@5": 0.3 + gain + noise,
                       "text_retrieval_recall@5": 0.3, "train_samples": 1000 * size}
        elif cell.kind == "headroom":
            summary = {"clean_zeroshot_acc1": 0.5, "clean_supervised_probe_acc1": 0.6 + noise,
                       "clean_margin": 0.1 + noise, "context_cosine": {"mean": 0.5, "min": 0.2, "max": 0.8}}
        elif cell.kind == "eval":
            shift = {"probe-lpclip": {"lpclip-r2": lpclip_gain}, "finetune": {"carft": carft_ood}}[cell.tags["group"]]
            if cell.tags["split"] == "test-id" and cell.tags["group"] == "finetune":
                shift = {"carft": carft_id}
            table = {name.split("=")[0]: {"clean_acc1": 0.6 + shift.get(name.split("=")[0], 0.0) + noise,
                                         "corrupted_acc1": 0.4 + shift.get(name.split("=")[0], 0.0) + noise,
                                         "clean_ece": 0.1 - shift.get(name.split("=")[0], 0.0) + noise}
                     for name in cell.config.classifiers}
            summary = {"table": table}
            if cell.tags["group"] == "probe-lpclip" and cell.tags["split"] == "test-clean":
                labels = rng.integers(0, 5, 400).astype(np.int16)
                preds = {}
                for name, p_right in (("zeroshot", 0.6), ("lpclip-r2", 0.6 + lpclip_gain)):
                    preds[f"{name}|image_id"], preds[f"{name}|label"] = np.arange(400), labels
                    for view in ("clean", "fog@3"):
                        right = rng.random(400) < p_right
                        preds[f"{name}|{view}|pred"] = np.where(right, labels, (labels + 1) % 5).astype(np.int16)
                np.savez(run / "predictions.npz", **preds)
        else:
            summary = {}
        (run / "summary.json").write_text(json.dumps(summary))


def test_claims_follow_the_numbers_and_the_report_says_so(tmp_path):
    plan = _plan(tmp_path)
    _fake_results(plan, psd_gain=0.05, lpclip_gain=0.05, carft_ood=0.04, carft_id=0.0)
    rows = collect(plan)
    claims = {c["id"]: c for c in decide(plan, rows)}
    assert claims[1]["verdict"] == "holds", claims[1]
    assert [p["verdict"] for p in claims[2]["parts"]] == ["holds", "holds", "holds"], claims[2]
    assert "paired bootstrap over 1200 test images" in claims[2]["parts"][0]["note"]
    assert claims[3]["verdict"] == "holds", claims[3]
    outputs = write_report(plan, rows, list(claims.values()), design_status(plan, had_results=False))
    report = (tmp_path / "s" / "report.md").read_text()
    for heading in ("## Claims", "### Claim 1", "## Headroom", "## Pretraining (claim 1)", "## LP-CLIP `lpclip` (claim 2)",
                    "## Fine-tuning (claim 3)"):
        assert heading in report
    assert {p.split("/")[-1] for p in outputs["plots"]} == {"scaling.png", "lpclip.png", "finetune.png"}
    assert "kind,group,seed,size,method,classifier,split,metric,value,cell" in (tmp_path / "s" / "results.csv").read_text()


def test_a_method_that_does_not_help_fails_and_a_changed_design_is_flagged(tmp_path):
    plan = _plan(tmp_path)
    _fake_results(plan, psd_gain=-0.05, lpclip_gain=-0.05, carft_ood=0.04, carft_id=-0.1)
    claims = {c["id"]: c for c in decide(plan, collect(plan))}
    assert claims[1]["verdict"] == claims[2]["verdict"] == "fails"
    assert claims[3]["verdict"] == "fails" and claims[3]["parts"][1]["verdict"] == "not equivalent"
    assert not design_status(plan, had_results=True)["changed"]  # the first run records the design
    changed = _plan(tmp_path, "world.mention_p=0.5")
    status = design_status(changed, had_results=True)
    assert status["changed"] and "changed after results existed" in status["text"]


def test_every_probe_variant_is_a_run_of_its_own_and_only_the_first_decides(tmp_path):
    plan = _plan(tmp_path, "probe_variants={hard: {lpclip: {labels: hard}}, soft: {lpclip: {labels: soft}}}")
    assert [c.config.lpclip.labels for c in cells_of(plan.cells, "probe", seed=0)] == ["hard", "soft"]
    assert {c.tags["group"] for c in cells_of(plan.cells, "eval", seed=0)} == {"probe-hard", "probe-soft", "finetune"}
    claim = decide(plan, [])[1]
    assert "decided by variant `hard`" in claim["title"]
    assert [p["verdict"] for p in claim["parts"]] == ["not run"] * 3 + ["(not run)"] * 3
