"""A study's report: report.md (design, world, headroom, every claim with its effect, interval, verdict and
test, and the tables behind them), results.csv (every number), table.csv (means and intervals over seeds),
claims.json and the plots. Rewritten after every finished cell, so a study cut short still shows where it is.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Sequence

from raylpclip.experiments.study_plan import StudyPlan
from raylpclip.experiments.study_plots import plot_finetune, plot_lpclip, plot_scaling
from raylpclip.experiments.study_results import AGGREGATE_KEYS, aggregate, write_rows


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(row: dict | None) -> str:
    if row is None:
        return "n/a"
    if math.isnan(row["low"]):
        return f"{_fmt(row['mean'])} (1 seed)"
    return f"{_fmt(row['mean'])} [{_fmt(row['low'])}, {_fmt(row['high'])}]"


def _find(table: Sequence[dict], **match: Any) -> dict | None:
    return next((r for r in table if all(r.get(k) == v for k, v in match.items())), None)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _design_lines(plan: StudyPlan, status: dict) -> list[str]:
    cfg, w = plan.cfg, plan.cfg.world
    lines = [f"# Study `{cfg.name}`", "", f"Design file: `{plan.design_file or '(command line only)'}`, design hash "
             f"`{plan.design_hash}`; {status['text']}", "",
             f"Seeds {cfg.seeds}; data sizes {cfg.sizes} of the training shards (nested subsets per seed); methods "
             f"{list(cfg.methods)} ({cfg.treatment} vs {cfg.baseline}); claims 2 and 3 start from `{cfg.downstream_model}` "
             f"at size {max(cfg.sizes):g}. Intervals: {cfg.claims.level:.0%}, two-sided.", "",
             f"World: `{w.kind}`; " + (f"contexts {w.contexts or 'default'}, held out {w.heldout_contexts}; "
                                       if w.kind == "contexts" else f"styles {w.styles}, held out {w.heldout_styles}; ")
             + f"contexts per image {w.contexts_per_image}, mention probability {w.mention_p}, wrong captions "
             f"{w.mismatch_fraction:.0%}. Zero-shot prompts (not training phrasings): {cfg.zeroshot_templates}.", ""]
    return lines


def _headroom_lines(table: Sequence[dict], plan: StudyPlan) -> list[str]:
    rows = []
    for method in plan.cfg.methods:
        at = dict(kind="headroom", method=method)
        for measure in ("clean", "id"):
            rows.append([method, measure] + [_ci(_find(table, **at, metric=f"{measure}_{m}")) for m in
                                             ("zeroshot_acc1", "supervised_probe_acc1", "margin")])
    cosines = [[method] + [_ci(_find(table, kind="headroom", method=method, metric=m)) for m in
                           ("context_cosine_mean", "context_cosine_max", "openai_templates_cosine_mean",
                            "openai_templates_cosine_max")] for method in plan.cfg.methods]
    return ["## Headroom (before any method is compared)", "",
            "A supervised logistic regression with the true labels on the image features of the largest-size "
            "model against its zero-shot head on the same test images: fitted on clean training images and tested "
            "on the clean test set, and fitted on the downstream data and tested on the ID test set.", ""] + _md_table(
        ["model", "images", "zero-shot acc1", "supervised probe acc1", "margin"], rows) + [
        "", "Pairwise cosines of the world's context embeddings (one prompt per context, averaged over the classes, "
        "as CAR-FT builds them) beside those of the 80 OpenAI templates CAR-FT uses by default:", ""] + _md_table(
        ["model", "contexts: mean", "max", "OpenAI templates: mean", "max"], cosines) + [""]


def _claim_lines(claims: Sequence[dict]) -> list[str]:
    lines = ["## Claims", ""]
    for claim in claims:
        lines += [f"### Claim {claim['id']}: {claim['title']} -> **{claim['verdict']}**", ""]
        rows = [[p["part"], _fmt(p.get("estimate"), 4),
                 f"[{_fmt(p.get('low'), 4)}, {_fmt(p.get('high'), 4)}]" if "low" in p else "n/a",
                 str(p.get("n", "")), p.get("test", ""), p["verdict"], p.get("note", "")] for p in claim["parts"]]
        lines += _md_table(["part", "effect", "interval", "n", "test", "verdict", "note"], rows) + [""]
    return lines


def _pretrain_lines(table: Sequence[dict], plan: StudyPlan) -> list[str]:
    rows = []
    for size in sorted(plan.cfg.sizes):
        for method in plan.cfg.methods:
            at = dict(kind="pretrain", size=size, method=method)
            samples = _find(table, **at, metric="train_samples")
            rows.append([f"{size:g}", str(int(samples["mean"])) if samples else "n/a", method]
                        + [_ci(_find(table, **at, metric=m)) for m in ("acc1", "image_retrieval_recall@5",
                                                                       "text_retrieval_recall@5")])
    return ["## Pretraining (claim 1): ID test, mean [interval] over seeds", ""] + _md_table(
        ["size", "train samples", "method", "zero-shot acc1", "image R@5", "text R@5"], rows) + [""]


def _classifier_lines(table: Sequence[dict], group: str, title: str, columns: Sequence[tuple[str, str, str]]) -> list[str]:
    names = list(dict.fromkeys(r["classifier"] for r in table if r["kind"] == "eval" and r["group"] == group))
    rows = [[n] + [_ci(_find(table, kind="eval", group=group, classifier=n, split=s, metric=m)) for _, s, m in columns]
            for n in names]
    return [title, ""] + _md_table(["classifier"] + [c[0] for c in columns], rows) + [""]


def design_status(plan: StudyPlan, had_results: bool) -> dict:
    """Whether the design is the one the study's first results were made with (design.json keeps it)."""
    path = plan.dir / "design.json"
    if not path.is_file():
        record = {"design_hash": plan.design_hash, "design_file": plan.design_file, "first_run": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
    record = json.loads(path.read_text())
    if record["design_hash"] == plan.design_hash:
        return {"changed": False, "text": "the design is the one the first results were made with."}
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["first_run"]))
    text = (f"**the design was changed after results existed** (first run {when} with design "
            f"`{record['design_hash']}`)" if had_results else "the design changed before any result existed.")
    return {"changed": had_results, "text": text, "first": record}


def write_report(plan: StudyPlan, rows: list[dict], claims: list[dict], status: dict) -> dict[str, str]:
    out = plan.dir
    level = plan.cfg.claims.level
    table = aggregate(rows, level)
    write_rows(rows, out / "results.csv")
    write_rows(table, out / "table.csv", [*AGGREGATE_KEYS, "seeds", "mean", "low", "high"])
    (out / "claims.json").write_text(json.dumps(claims, indent=2))
    primary = f"probe-{next(iter(plan.cfg.probe_variants))}"
    plots = [plot_scaling(table, plan, out / "scaling.png"), plot_lpclip(table, out / "lpclip.png", group=primary),
             plot_finetune(table, out / "finetune.png")]
    lines = _design_lines(plan, status) + _claim_lines(claims) + _headroom_lines(table, plan) + _pretrain_lines(table, plan)
    for variant in plan.cfg.probe_variants:
        lines += _classifier_lines(table, f"probe-{variant}", f"## LP-CLIP `{variant}` (claim 2): clean test set and "
                                   "its corrupted views, ID and held-out contexts", [
            ("clean acc1", "test-clean", "clean_acc1"), ("corrupted acc1", "test-clean", "corrupted_acc1"),
            ("clean ECE", "test-clean", "clean_ece"), ("ID acc1", "test-id", "clean_acc1"),
            ("held-out contexts acc1", "test-ood", "clean_acc1")])
    lines += _classifier_lines(table, "finetune", "## Fine-tuning (claim 3): ID and OOD", [
        ("ID acc1", "test-id", "clean_acc1"), ("held-out contexts acc1", "test-ood", "clean_acc1"),
        ("corrupted acc1", "test-clean", "corrupted_acc1"), ("clean acc1", "test-clean", "clean_acc1"),
        ("ID ECE", "test-id", "clean_ece")])
    lines += ["## Files", "", "results.csv (every number), table.csv (means and intervals), claims.json, "
              + ", ".join(p.name for p in plots if p is not None), ""]
    (out / "report.md").write_text("\n".join(lines))
    return {"report": str(out / "report.md"), "results_csv": str(out / "results.csv"),
            "plots": [str(p) for p in plots if p is not None]}
