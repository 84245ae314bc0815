"""The study's three claims, each decided from the results by the test its design names (study_stats.py):

1. PSD beats CLIP at equal compute under noisy many-to-many captions (zero-shot acc1 and image retrieval
   recall@5 on the ID test set, at the largest data size, paired over seeds), and its acc1 gain grows
   with data (slope of the per-seed gain over log10 training samples).
2. LP-CLIP, with no label, beats its zero-shot teacher on clean and corrupted acc1 and on ECE (the last
   round against the teacher, on the clean test set and its corrupted views, paired over seeds; a paired
   bootstrap over the test images of all seeds beside it); the supervised probe is the upper reference.
3. CAR-FT keeps more OOD accuracy than plain FT (mean of held-out-context acc1 and corrupted acc1) at
   similar ID accuracy (the ID difference's interval within +-claims.id_margin); WiSE-FT beside them.

Every part says its effect, interval, verdict (holds / fails / undetermined) and test; a claim holds
when all its parts hold and fails when any part fails.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raylpclip.experiments.study_plan import StudyPlan, cells_of
from raylpclip.experiments.study_results import correct, paired_by_image, predictions, values
from raylpclip.experiments.study_stats import Interval, equivalent, paired_bootstrap, paired_t, slope


def _part(name: str, interval: Interval | None, *, better: str = "higher", note: str = "") -> dict[str, Any]:
    if interval is None:
        return {"part": name, "verdict": "not run", "note": note or "missing results"}
    return {"part": name, "estimate": interval.estimate, "low": interval.low, "high": interval.high, "n": interval.n,
            "test": interval.method, "verdict": interval.verdict(better=better), "note": note}


def _paired(rows, a: dict, b: dict, level: float) -> Interval | None:
    va, vb = values(rows, **a), values(rows, **b)
    seeds = sorted(set(va) & set(vb))
    if len(seeds) < 2:
        return None
    return paired_t([va[s] for s in seeds], [vb[s] for s in seeds], level=level)


def _overall(parts: list[dict]) -> str:
    verdicts = [p["verdict"] for p in parts]
    if any(v in ("fails", "not equivalent") for v in verdicts):
        return "fails"
    if all(v in ("holds", "equivalent") for v in verdicts):
        return "holds"
    return "not run" if all(v == "not run" for v in verdicts) else "undetermined"


def claim_psd(plan: StudyPlan, rows: list[dict]) -> dict[str, Any]:
    cfg, level = plan.cfg, plan.cfg.claims.level
    top, base, treat = max(cfg.sizes), cfg.baseline, cfg.treatment
    parts = []
    for metric in ("acc1", "image_retrieval_recall@5"):
        at = dict(kind="pretrain", size=top, metric=metric)
        parts.append(_part(f"{treat} - {base} {metric} (ID test, size {top:g})",
                           _paired(rows, {**at, "method": treat}, {**at, "method": base}, level)))
    xs, gains = [], []
    for size in cfg.sizes:
        a = values(rows, kind="pretrain", size=size, method=treat, metric="acc1")
        b = values(rows, kind="pretrain", size=size, method=base, metric="acc1")
        n = values(rows, kind="pretrain", size=size, method=base, metric="train_samples")
        for seed in sorted(set(a) & set(b) & set(n)):
            xs.append(math.log10(n[seed]))
            gains.append(a[seed] - b[seed])
    grows = slope(xs, gains, level=level) if len(set(xs)) >= 2 and len(xs) >= 3 else None
    parts.append(_part("the acc1 gain grows with data (slope per decade of samples)", grows,
                       note="" if grows else "needs at least 2 sizes"))
    return {"id": 1, "title": f"{treat} beats {base} at equal compute, more so with more data", "parts": parts,
            "verdict": _overall(parts)}


def _teacher_student(plan: StudyPlan, group: str, student: str) -> list[tuple[np.ndarray, ...]]:
    """Per seed: (teacher correct, student correct) on clean and mean-over-corruptions, matched by image."""
    out = []
    for cell in cells_of(plan.cells, "eval", group=group, split="test-clean"):
        preds = predictions(plan, cell.id)
        if preds is None or f"{student}|image_id" not in preds:
            continue
        views = sorted({k.split("|")[1] for k in preds if k.startswith(f"{student}|") and k.endswith("|pred")})
        corrupted = [v for v in views if v != "clean"]
        t_clean, s_clean = paired_by_image(correct(preds, "zeroshot", "clean"), correct(preds, student, "clean"))
        if corrupted:
            t_c = np.mean([paired_by_image(correct(preds, "zeroshot", v), correct(preds, student, v))[0]
                           for v in corrupted], axis=0)
            s_c = np.mean([paired_by_image(correct(preds, "zeroshot", v), correct(preds, student, v))[1]
                           for v in corrupted], axis=0)
        else:
            t_c = s_c = np.zeros(0)
        out.append((t_clean, s_clean, t_c, s_c))
    return out


def lpclip_parts(plan: StudyPlan, rows: list[dict], variant: str) -> list[dict[str, Any]]:
    """The parts of claim 2 for one LP-CLIP variant: its last round against the zero-shot teacher."""
    cfg, level, group = plan.cfg, plan.cfg.claims.level, f"probe-{variant}"
    probe = cells_of(plan.cells, "probe", variant=variant)[0]
    student = f"lpclip-r{probe.config.lpclip.rounds}"
    at = dict(kind="eval", group=group, split="test-clean")
    parts = []
    pooled = _teacher_student(plan, group, student)
    for metric, idx in (("clean_acc1", 0), ("corrupted_acc1", 2)):
        boot = None
        if pooled and all(len(p[idx]) for p in pooled):
            s = np.concatenate([p[idx + 1] for p in pooled])
            t = np.concatenate([p[idx] for p in pooled])
            boot = paired_bootstrap(s, t, resamples=cfg.claims.bootstrap_resamples, level=level)
        note = (f"paired bootstrap over {boot.n} test images of all seeds: {boot.estimate:+.4f} "
                f"[{boot.low:+.4f}, {boot.high:+.4f}]" if boot else "")
        parts.append(_part(f"{variant} {student} - zero-shot teacher {metric}",
                           _paired(rows, {**at, "classifier": student, "metric": metric},
                                   {**at, "classifier": "zeroshot", "metric": metric}, level), note=note))
    parts.append(_part(f"zero-shot teacher - {variant} {student} clean_ece (lower is better)",
                       _paired(rows, {**at, "classifier": "zeroshot", "metric": "clean_ece"},
                               {**at, "classifier": student, "metric": "clean_ece"}, level)))
    return parts


def claim_lpclip(plan: StudyPlan, rows: list[dict]) -> dict[str, Any]:
    title = "LP-CLIP, with no label, beats its zero-shot teacher (clean, corrupted, ECE)"
    variants = [v for v in plan.cfg.probe_variants if cells_of(plan.cells, "probe", variant=v)]
    if not variants:
        return {"id": 2, "title": title, "verdict": "not run",
                "parts": [_part("LP-CLIP against its teacher", None, note="part `probe` not in the design's parts")]}
    parts = lpclip_parts(plan, rows, variants[0])
    secondary = [{**p, "verdict": f"({p['verdict']})", "note": ("secondary variant, not deciding. " + p.get("note", "")).strip()}
                 for v in variants[1:] for p in lpclip_parts(plan, rows, v)]
    return {"id": 2, "title": f"{title}; decided by variant `{variants[0]}`", "parts": parts + secondary,
            "verdict": _overall(parts)}


def _ood(rows: list[dict], classifier: str) -> dict[int, float]:
    """seed -> the OOD acc1 of a fine-tuning classifier: mean of held-out contexts and corruptions."""
    at = dict(kind="eval", group="finetune", classifier=classifier)
    contexts = values(rows, **at, split="test-ood", metric="clean_acc1")
    corrupted = values(rows, **at, split="test-clean", metric="corrupted_acc1")
    return {s: (contexts[s] + corrupted[s]) / 2 for s in set(contexts) & set(corrupted)}


def claim_carft(plan: StudyPlan, rows: list[dict]) -> dict[str, Any]:
    cfg, level = plan.cfg, plan.cfg.claims.level
    ood_c, ood_f = _ood(rows, "carft"), _ood(rows, "ft")
    seeds = sorted(set(ood_c) & set(ood_f))
    ood = paired_t([ood_c[s] for s in seeds], [ood_f[s] for s in seeds], level=level) if len(seeds) >= 2 else None
    at = dict(kind="eval", group="finetune", split="test-id", metric="clean_acc1")
    idd = _paired(rows, {**at, "classifier": "carft"}, {**at, "classifier": "ft"}, level)
    same = None if idd is None else equivalent(idd, cfg.claims.id_margin)
    parts = [_part("carft - ft OOD acc1 (mean of held-out contexts and corruptions)", ood),
             {**_part(f"carft - ft ID acc1 within +-{cfg.claims.id_margin:g}", idd),
              "verdict": "not run" if idd is None else ("equivalent" if same else "not equivalent"),
              "test": "two one-sided tests (interval within the margin)"}]
    return {"id": 3, "title": "CAR-FT keeps more OOD accuracy than FT at similar ID accuracy", "parts": parts,
            "verdict": _overall(parts)}


def decide(plan: StudyPlan, rows: list[dict]) -> list[dict[str, Any]]:
    return [claim_psd(plan, rows), claim_lpclip(plan, rows), claim_carft(plan, rows)]
