"""`raylpclip probe`: LP-CLIP (methods.md section 2) on a frozen CLIP image encoder, end to end.

1. the zero-shot teacher from class names and templates, on the driver;
2. batch inference on Ray Data (an actor pool, one encoder per actor): weak- and strong-view image
   features and the teacher's logits, written once as parquet under <run>/features/train (a re-run
   reuses them: probing and relabelling never run the encoder again);
3. LP-CLIP self-training (and the supervised reference when the shards carry labels) on Ray Train
   workers, each holding a shard of the features;
4. classifier directories for the zero-shot teacher, every LP-CLIP round and the supervised probe;
5. the robustness evaluation of all of them on the clean and corrupted test set (`raylpclip eval`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from safetensors.torch import load_file

from raylpclip import batch_schema
from raylpclip.batch_schema import FEATURE_PREFIX, LOGITS_PREFIX
from raylpclip.commands.probe import ProbeConfig
from raylpclip.config import ConfigError, save_config, to_dict
from raylpclip.data.metadata import label_names
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.storage import configure_s3
from raylpclip.data.views import STRONG, WEAK
from raylpclip.eval.robustness_report import report
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.methods.lpclip_config import LPCLIPConfig
from raylpclip.models.classifier import Classifier, context_length, image_size, load_encoder, save_classifier
from raylpclip.models.head import LinearProbe
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.runtime.data.batch_inference import encode, view_dataset
from raylpclip.runtime.data.robustness_eval import evaluate
from raylpclip.runtime.train.probe_worker import HEADS_FILE, ProbeWorkerArgs, probe_worker
from raylpclip.runtime.train.trainer_factory import fit, make_trainer, must_have_checkpoint
from raylpclip.summary import write_summary

DONE_MARKER = "_COMPLETE"


def probe_classnames(cfg: ProbeConfig) -> list[str]:
    if cfg.eval.classnames:
        return list(cfg.eval.classnames)
    for path in (cfg.data.eval, cfg.data.train):
        if path:
            files, fmt = resolve_shards(path, cfg.data.format)
            names = label_names(files, fmt=fmt)
            if names:
                return names
    raise ConfigError("config key 'eval.classnames': required, since no shard carries `label_name` metadata")


def _feature_inputs(cfg: ProbeConfig) -> str:
    """What the stored features (and the teacher's logits beside them) depend on: reused only when all of it
    is the same."""
    return json.dumps({"model": str(Path(cfg.model).resolve()), "train": cfg.data.train, "views": to_dict(cfg.views),
                       "max_train_samples": cfg.max_train_samples, "seed": cfg.data.shuffle_seed,
                       "teacher": [to_dict(cfg.eval), cfg.lpclip.logit_scale]}, sort_keys=True)


def extract_features(cfg: ProbeConfig, head: LinearProbe, counter) -> Path:
    """Weak/strong features and teacher logits of every training image, as parquet (done once per run)."""
    out = cfg.run_dir / "features" / "train"
    marker = out / DONE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("inputs") == _feature_inputs(cfg):
        print(f"[raylpclip] reusing features in {out}", flush=True)
        return out
    if out.exists():  # made from other inputs (or cut short): made again
        shutil.rmtree(out)
    start = time.perf_counter()
    data = dataclasses.replace(cfg.data, image_size=image_size(cfg.model))
    ds = view_dataset(cfg.data.train, data, views=[WEAK, STRONG], limit=cfg.max_train_samples, counter=counter,
                      batch_size=cfg.inference.decode_batch_size, augment=cfg.views)
    ds = encode(ds, encoder=cfg.model, cfg=cfg.inference, heads=[head])
    keep = [FEATURE_PREFIX + WEAK, FEATURE_PREFIX + STRONG, LOGITS_PREFIX + WEAK, batch_schema.LABEL, batch_schema.IMAGE_ID,
            batch_schema.KEY]
    rows = _write_parts(ds.select_columns(keep), out)
    marker.write_text(json.dumps({"rows": rows, "inputs": _feature_inputs(cfg)}))
    print(f"[raylpclip] features of {rows} training images written to {out} in {time.perf_counter() - start:.0f}s",
          flush=True)
    return out


def _write_parts(ds, out: Path, *, every_s: float = 30.0) -> int:
    """Stream the encoded rows into parquet parts under `out` (Ray Data's own write says nothing until it
    is done; this says how far it got every `every_s` seconds). Returns the row count."""
    out.mkdir(parents=True, exist_ok=True)
    rows, start, last = 0, time.perf_counter(), 0.0
    for i, table in enumerate(ds.iter_batches(batch_size=4096, batch_format="pyarrow")):
        pq.write_table(table, out / f"part-{i:05d}.parquet")
        rows += table.num_rows
        elapsed = time.perf_counter() - start
        if elapsed - last >= every_s:
            print(f"[raylpclip] features: {rows} training images encoded, {rows / elapsed:.0f} images/s", flush=True)
            last = elapsed
    return rows


def _labels_and_teacher(features: Path) -> tuple[np.ndarray, np.ndarray]:
    # select_columns after the read: Ray Data pushes the projection into the parquet read (`columns=` is deprecated)
    ds = ray.data.read_parquet(str(features.resolve())).select_columns([batch_schema.LABEL, LOGITS_PREFIX + WEAK])
    parts = list(ds.iter_batches(batch_size=65536, batch_format="numpy"))
    return (np.concatenate([p[batch_schema.LABEL] for p in parts]),
            np.concatenate([p[LOGITS_PREFIX + WEAK] for p in parts])[:, 0])


def train_probes(cfg: ProbeConfig, features: Path, weights: torch.Tensor, lpclip: LPCLIPConfig,
                 supervised: bool) -> dict[str, LinearProbe]:
    columns_needed = ([FEATURE_PREFIX + WEAK, FEATURE_PREFIX + STRONG, batch_schema.IMAGE_ID]
                      + ([batch_schema.LABEL] if supervised else []))
    dataset = ray.data.read_parquet(str(features.resolve())).select_columns(columns_needed)
    args = ProbeWorkerArgs(lpclip=lpclip, zeroshot_weights=weights.numpy(), supervised=supervised,
                           threads=cfg.train.threads)
    trainer = make_trainer(probe_worker, args, name=f"{cfg.name}-train", storage=str(cfg.run_dir.resolve()),
                           num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                           resources={"CPU": cfg.train.cpus_per_worker}, datasets={"train": dataset},
                           train_names=["train"], max_failures=cfg.train.max_failures)
    result = fit(trainer, cfg.name)
    with must_have_checkpoint(result, cfg.name).as_directory() as directory:
        tensors = load_file(f"{directory}/{HEADS_FILE}")
    heads = {}
    for name in sorted({k.rsplit(".", 1)[0] for k in tensors}):
        head = LinearProbe(tensors[f"{name}.weight"].shape[1], tensors[f"{name}.weight"].shape[0])
        with torch.no_grad():
            head.weight.copy_(tensors[f"{name}.weight"])
            head.bias.copy_(tensors[f"{name}.bias"])
        heads[name] = head.eval()
    return heads


def run_probe(cfg: ProbeConfig) -> dict:
    start = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    configure_s3(cfg.data.s3)
    classnames = probe_classnames(cfg)
    tower, tokenizer = load_encoder(cfg.model)
    scale = cfg.lpclip.logit_scale or float(tower.logit_scale().detach())
    lpclip = dataclasses.replace(cfg.lpclip, logit_scale=scale)
    weights = zeroshot_classifier(tower, tokenizer, classnames, cfg.eval.templates, context_length=context_length(tower))
    teacher = LinearProbe.from_zeroshot(weights, logit_scale=scale)
    print(f"[raylpclip] probe {cfg.name}: {len(classnames)} classes, {len(cfg.eval.templates)} templates, "
          f"teacher scale {scale:.2f}, {lpclip.rounds} rounds ({lpclip.labels} labels, threshold "
          f"{lpclip.confidence_threshold})", flush=True)

    ensure_ray(cfg.ray)
    counter = counters.new_counter()
    features = extract_features(cfg, teacher, counter)
    labels, teacher_logits = _labels_and_teacher(features)
    supervised = cfg.supervised and bool((labels >= 0).all())
    heads = {"zeroshot": teacher, **train_probes(cfg, features, weights, lpclip, supervised)}

    classifiers = {}
    for name, head in heads.items():
        kind = "supervised" if name == "supervised" else name.split("-")[0]
        path = save_classifier(run_dir / "classifiers" / name, head=head, classnames=classnames, kind=kind,
                               encoder=cfg.model, info={"lpclip": dataclasses.asdict(lpclip)})
        classifiers[name] = Classifier(encoder=str(Path(cfg.model).resolve()), head=head, classnames=classnames,
                                       kind=kind)
        print(f"[raylpclip] classifier {name}: {path}", flush=True)
    summary = {"train_samples": int(len(labels)), "num_classes": len(classnames), "teacher_logit_scale": scale,
               "classifiers": {n: str(run_dir / "classifiers" / n) for n in heads}}
    if (labels >= 0).all():  # diagnostics only: how good the round-1 pseudo-labels were
        summary["pseudo_label_acc_r1"] = float((teacher_logits.argmax(1) == labels).mean())
    if cfg.evaluate:
        output = evaluate(classifiers, eval_path=cfg.data.eval, data=cfg.data, cfg=cfg.robustness,
                          inference=cfg.inference, counter=counter)
        summary["eval"] = report(output, run_dir / "eval")
    summary.update(run_dir=str(run_dir.resolve()), wall_s=time.perf_counter() - start, skipped=counters.totals(counter))
    write_summary(run_dir, summary)
    return summary
