"""The robustness evaluation on Ray Data: classifiers on the clean test set and its corrupted copies
(CIFAR-10-C style), one pass per encoder, every head of that encoder applied in the same pass. The
numbers, tables and plots are made from what it gathers by eval/robustness_report.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict

import numpy as np

from raylpclip import batch_schema
from raylpclip.batch_schema import FEATURE_PREFIX, LOGITS_PREFIX, TEXT_FEATURES
from raylpclip.config import DataConfig, InferenceConfig, RobustnessConfig
from raylpclip.eval.robustness_report import EvalOutput, classification_rows, report, retrieval_rows, views_for
from raylpclip.models.classifier import Classifier, image_size
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.runtime.data.batch_inference import encode, view_dataset
from raylpclip.summary import write_summary


def _collect(ds, *, what: str, total_views: int) -> dict[str, list[np.ndarray]]:
    """Pull the encoded rows to the driver (logits are small: N x heads x classes per view)."""
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    seen, start, last = 0, time.perf_counter(), 0.0
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        for name, value in batch.items():
            if name.startswith((LOGITS_PREFIX, FEATURE_PREFIX)) or name in (batch_schema.LABEL, batch_schema.IMAGE_ID, TEXT_FEATURES):
                parts[name].append(value)
        seen += len(batch[batch_schema.LABEL])
        now = time.perf_counter() - start
        if now - last > 30:
            print(f"[raylpclip] {what}: {seen} images x {total_views} views encoded, {seen / now:.1f} images/s", flush=True)
            last = now
    if not seen:
        raise RuntimeError(f"{what}: the test set yielded no usable image")
    return parts


def evaluate(classifiers: dict[str, Classifier | str], *, eval_path: str, data: DataConfig, cfg: RobustnessConfig,
             inference: InferenceConfig, tokenizers: dict[str, object] | None = None, counter=None) -> EvalOutput:
    """classifiers: name -> Classifier, or name -> encoder path for a retrieval eval (caption test sets).
    One Ray Data pass per distinct encoder, at that encoder's input size; `tokenizers` (encoder ->
    tokenizer) only for retrieval."""
    views = views_for(cfg)
    by_encoder: dict[str, dict] = defaultdict(dict)
    for name, clf in classifiers.items():
        by_encoder[clf.encoder if isinstance(clf, Classifier) else clf][name] = clf
    rows, reliability, samples, predictions = [], {}, 0, {}
    retrieval = any(not isinstance(c, Classifier) for c in classifiers.values())
    for i, (encoder, members) in enumerate(by_encoder.items(), 1):
        print(f"[raylpclip] eval encoder {i}/{len(by_encoder)} ({encoder}): {', '.join(members)} on "
              f"{len(views)} views ({len(views) - 1} corrupted)", flush=True)
        tokenizer = (tokenizers or {}).get(encoder) if retrieval else None
        sized = dataclasses.replace(data, image_size=image_size(encoder))
        ds = view_dataset(eval_path, sized, views=views, limit=cfg.max_samples, tokenizer=tokenizer, counter=counter,
                          batch_size=inference.decode_batch_size)
        heads = [] if retrieval else [c.head for c in members.values()]
        parts = _collect(encode(ds, encoder=encoder, cfg=inference, heads=heads, keep_features=retrieval),
                         what=f"eval of {encoder}", total_views=len(views))
        samples = sum(len(x) for x in parts[batch_schema.LABEL])
        if retrieval:
            for name in members:
                rows += retrieval_rows(name, parts, views)
        else:
            mine: dict = {}
            more_rows, more_bins = classification_rows(members, parts, views, cfg.n_bins, predictions=mine)
            rows += more_rows
            reliability.update(more_bins)
            # Each encoder's pass delivers the images in its own order: every classifier keeps its images'
            # ids and labels, so that a paired comparison matches images, not positions.
            ids, labels = np.concatenate(parts[batch_schema.IMAGE_ID]), np.concatenate(parts[batch_schema.LABEL])
            for name in members:
                predictions[f"{name}|image_id"], predictions[f"{name}|label"] = ids, labels.astype(np.int16)
            predictions.update(mine)
    return EvalOutput(rows, reliability, samples, "retrieval" if retrieval else "classification", predictions)


def run_robustness_eval(cfg, classifiers: dict[str, Classifier | str], *, tokenizers: dict[str, object]) -> dict:
    """`raylpclip eval`'s run (cfg: commands/evaluate.EvalRunConfig): the evaluation on Ray, then the report
    and summary.json in the run directory."""
    start = time.perf_counter()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ensure_ray(cfg.ray)
    counter = counters.new_counter()
    output = evaluate(classifiers, eval_path=cfg.data.eval, data=cfg.data, cfg=cfg.robustness,
                      inference=cfg.inference, tokenizers=tokenizers, counter=counter)
    summary = report(output, cfg.run_dir, save_predictions=cfg.save_predictions)
    summary.update(run_dir=str(cfg.run_dir.resolve()), wall_s=time.perf_counter() - start,
                   skipped=counters.totals(counter), classifiers={n: getattr(c, "encoder", c) for n, c in classifiers.items()})
    write_summary(cfg.run_dir, summary)
    return summary
