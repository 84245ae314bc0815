"""The pretraining driver: resolve everything before Ray starts, build the TorchTrainer, fit, then
report (export the model, write summary.json)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from ray.train.torch import TorchTrainer

from raylpclip.commands.plot import draw_run_curves
from raylpclip.config import PretrainConfig, save_config
from raylpclip.data.metadata import label_names, sample_captions
from raylpclip.data.shard_files import resolve_shards
from raylpclip.data.storage import configure_s3
from raylpclip.engine.checkpoint_choice import preflight
from raylpclip.engine.checkpoint_state import verify_state
from raylpclip.engine.model_export import export_checkpoint_model
from raylpclip.models.bpe_tokenizer import load_tokenizer, train_tokenizer
from raylpclip.models.model_card import write_model_card
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.runtime.cluster.stop_notice import new_notice
from raylpclip.runtime.train.pretrain_worker import PretrainWorkerArgs, pretrain_worker
from raylpclip.runtime.train.trainer_factory import (TrainData, checkpoint_place, fit, inspect_train_data, make_trainer,
                                                     must_have_checkpoint, run_path, run_storage, train_inputs)
from raylpclip.runtime.train.worker_setup import progress
from raylpclip.runtime.train.worker_trace import TRACE_ENV
from raylpclip.summary import write_summary

SUMMARY_KEYS = ("acc1", "acc5", "mean_per_class_recall", "loss", "logit_scale", "logit_bias", "psd_alpha", "step",
                "samples_seen", "data_wait_fraction", "eval_samples", "epoch", "eval_images", "eval_texts",
                "ema_acc1", "ema_acc5", "ema_mean_per_class_recall")


def prepare_tokenizer(cfg: PretrainConfig, data: TrainData):
    """The configured tokenizer, the one this run already trained (so a resumed run reuses it), or a new
    BPE trained on a sample of the training captions."""
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    run_tok = cfg.run_dir / "tokenizer"
    if cfg.model.pretrained:
        return load_tokenizer(cfg.model.pretrained)
    if run_tok.is_dir():
        return load_tokenizer(str(run_tok))
    per_source = max(1, cfg.model.tokenizer_samples // len(data.files))
    captions = [c for path, files in data.files.items()
                for c in sample_captions(files, fmt=data.formats[path], limit=per_source)]
    if not captions:
        raise ValueError(f"no captions found in training shards {list(data.files)} to train a tokenizer on")
    return train_tokenizer(captions, vocab_size=cfg.model.vocab_size, out_dir=str(run_tok))


def eval_classnames(cfg: PretrainConfig) -> list[str]:
    """Zero-shot classes: configured, or the eval shards' label names; none means a retrieval eval set."""
    if cfg.eval.classnames or not cfg.data.eval:
        return list(cfg.eval.classnames)
    files, fmt = resolve_shards(cfg.data.eval, cfg.data.format)
    return label_names(files, fmt=fmt)


def check_run_checkpoints(cfg: PretrainConfig) -> None:
    """Before Ray starts: one clear line when the run's checkpoints are all broken (see
    engine/checkpoint_choice.py), a warning when the newest is."""
    storage, filesystem = run_storage(cfg)
    local = filesystem is None
    preflight(filesystem or pafs.LocalFileSystem(), run_path(cfg, storage), warn=progress,
              verify=verify_state if local else None)


@dataclass
class Resolved:
    """A pretraining run's inputs, known before Ray starts."""

    data: TrainData
    tokenizer: object
    classnames: list[str]


def resolve(cfg: PretrainConfig) -> Resolved:
    """Shards, tokenizer and eval classes (and the run's checkpoints checked): every input error here."""
    configure_s3(cfg.data.s3)
    data = inspect_train_data(cfg)
    resolved = Resolved(data, prepare_tokenizer(cfg, data), eval_classnames(cfg))
    check_run_checkpoints(cfg)
    return resolved


def build_trainer(cfg: PretrainConfig, *, tokenizer, classnames: list[str], data: TrainData, counter,
                  callbacks: tuple = (), storage_counter=None, bench: dict | None = None,
                  data_options=None, notice=None) -> TorchTrainer:
    """The run's TorchTrainer. `callbacks`: Ray Train UserCallbacks, e.g. one forwarding reports to a Tune
    trial. With `RAYLPCLIP_WORKER_TRACE=<dir>` in the environment the workers record their pids and
    batches there (runtime/train/worker_trace.py)."""
    inputs = train_inputs(cfg, data, tokenizer=tokenizer, counter=counter, with_eval=True,
                          storage_counter=storage_counter)
    storage, filesystem = run_storage(cfg, storage_counter=storage_counter)
    elastic = (cfg.train.min_workers, cfg.train.num_workers) if cfg.train.min_workers else None
    args = PretrainWorkerArgs(
        config=cfg, tokenizer=tokenizer, classnames=classnames, train_files=inputs.files,
        train_formats=inputs.formats, train_filesystems=inputs.filesystems,
        run_storage=(filesystem, run_path(cfg, storage)), train_samples=data.samples, counter=counter,
        storage_counter=storage_counter, elastic=f"{elastic[0]}-{elastic[1]}" if elastic else None,
        trace=os.environ.get(TRACE_ENV) or None, bench=bench, notice=notice)
    return make_trainer(pretrain_worker, args, name=cfg.name, storage=storage, filesystem=filesystem,
                        num_workers=elastic or cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                        resources={"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources},
                        datasets=inputs.datasets, train_names=inputs.train_names,
                        keep_checkpoints=cfg.train.keep_checkpoints, max_failures=cfg.train.max_failures,
                        callbacks=callbacks, data_options=data_options)


def export_checkpoint(cfg: PretrainConfig, checkpoint, *, tokenizer, out_dir: Path) -> Path:
    """Save the checkpoint's model, raw or EMA weights as export.weights says, with save_pretrained, its
    tokenizer and image processor beside it (engine/model_export.py)."""
    with checkpoint.as_directory() as directory:
        return export_checkpoint_model(cfg, directory, tokenizer=tokenizer, out_dir=out_dir)


def report(cfg: PretrainConfig, result, resolved: Resolved, *, counter, storage_counter, start: float) -> dict:
    """The exported model, summary.json and the model's card (README.md), from the fitted run's result."""
    checkpoint = must_have_checkpoint(result, cfg.name)
    model_dir = export_checkpoint(cfg, checkpoint, tokenizer=resolved.tokenizer, out_dir=cfg.run_dir / "model")
    metrics = result.metrics or {}
    classnames = resolved.classnames
    summary = {k: v for k, v in metrics.items() if k in SUMMARY_KEYS or "retrieval_recall@" in k}
    summary.update(
        num_classes=len(classnames),
        samples_per_s=metrics.get("train_samples_per_s"),
        wall_s=time.perf_counter() - start,
        run_dir=str(cfg.run_dir.resolve()),
        model_dir=str(model_dir.resolve()),
        exported_weights=cfg.export.weights,  # raw | ema: which weights model_dir holds
        ema_decay=cfg.train.ema_decay,
        checkpoint=checkpoint.path,
        chance_acc1=1.0 / len(classnames) if classnames else None,
        train_samples=resolved.data.samples,
        **counters.report(counter),  # skipped: distinct bad samples by reason; skipped_sightings: reads of them
        storage_retries=counters.totals(storage_counter).get("storage_retries", 0),
        read_retries=counters.totals(storage_counter).get("read_retries", 0),
    )
    write_summary(cfg.run_dir, summary)
    # The card states the final metrics, so it is written once they are in the summary.
    write_model_card(model_dir, cfg=cfg, summary=summary, shards=resolved.data.files,
                     formats=resolved.data.formats, classnames=classnames)
    return summary


def run_pretrain(cfg: PretrainConfig) -> dict:
    start = time.perf_counter()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    resolved = resolve(cfg)
    data, classnames = resolved.data, resolved.classnames
    size = f"{data.samples} samples in " if data.samples else ""
    evaluation = f"{len(classnames)} eval classes" if classnames else ("retrieval eval" if cfg.data.eval else "no eval")
    print(f"[raylpclip] run {cfg.name}: {size}{sum(map(len, data.files.values()))} training shards, {evaluation}, "
          f"{cfg.train.num_workers} workers, {cfg.train.steps} steps of {cfg.train.batch_size}", flush=True)
    ensure_ray(cfg.ray)
    counter, storage_counter = counters.new_counter(), counters.new_counter()
    notice = new_notice()
    trainer = build_trainer(cfg, tokenizer=resolved.tokenizer, classnames=classnames, data=data, counter=counter,
                            storage_counter=storage_counter, notice=notice)
    result = fit(trainer, cfg.name, notice=notice, steps=cfg.train.steps, grace_s=cfg.train.stop_grace_s,
                 checkpoints=checkpoint_place(cfg))
    draw_run_curves(cfg.run_dir)  # curves.png from rank 0's metrics.jsonl
    return report(cfg, result, resolved, counter=counter, storage_counter=storage_counter, start=start)
