"""The pretraining driver: resolve everything before Ray starts, run the TorchTrainer, export, summarise."""

from __future__ import annotations

import time
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from raylpclip.config import PretrainConfig, save_config, to_dict
from raylpclip.data.metadata import label_names, sample_captions
from raylpclip.data.shards import resolve_shards
from raylpclip.engine.checkpoint import load_state
from raylpclip.models.clip import export_clip
from raylpclip.models.factory import build_tower
from raylpclip.models.tokenizer import load_tokenizer, train_tokenizer
from raylpclip.runtime.datasets import eval_dataset, train_dataset
from raylpclip.runtime.pretrain_worker import pretrain_worker
from raylpclip.runtime.session import ensure_ray
from raylpclip.summary import write_summary

SUMMARY_KEYS = ("acc1", "acc5", "mean_per_class_recall", "loss", "logit_scale", "psd_alpha", "step",
                "samples_seen", "data_wait_fraction", "eval_samples")


def prepare_tokenizer(cfg: PretrainConfig, train_files: list[str], fmt: str):
    """The configured tokenizer, the one this run already trained (so a resumed run reuses it), or a new
    BPE trained on a sample of the training captions."""
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    run_tok = cfg.run_dir / "tokenizer"
    if cfg.model.pretrained:
        return load_tokenizer(cfg.model.pretrained)
    if run_tok.is_dir():
        return load_tokenizer(str(run_tok))
    captions = sample_captions(train_files, fmt=fmt, limit=cfg.model.tokenizer_samples)
    if not captions:
        raise ValueError(f"no captions found in training shards {cfg.data.train!r} to train a tokenizer on")
    return train_tokenizer(captions, vocab_size=cfg.model.vocab_size, out_dir=str(run_tok))


def build_trainer(cfg: PretrainConfig, *, tokenizer, classnames: list[str]) -> TorchTrainer:
    datasets = {"train": train_dataset(cfg.data, tokenizer=tokenizer)}
    if classnames:
        datasets["eval"] = eval_dataset(cfg.data, tokenizer=tokenizer)
    storage = cfg.ray.storage_path or str(Path(cfg.output_dir).resolve())
    return TorchTrainer(
        pretrain_worker,
        train_loop_config={"config": to_dict(cfg), "tokenizer": tokenizer, "classnames": classnames},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            # Ray Train logs every report (the whole metrics dict) at INFO; the workers' progress lines
            # say it shorter. Full logs stay in the session's log files.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        # The eval set goes whole to every worker (rank 0 evaluates); only training data is split.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def export_checkpoint(cfg: PretrainConfig, checkpoint, *, tokenizer, out_dir: Path) -> Path:
    """Save the checkpoint's model with save_pretrained so CLIPModel.from_pretrained(out_dir) loads it."""
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
    tower = build_tower(cfg.model, tokenizer=tokenizer)
    tower.load_state_dict(state["task"]["model"])
    export_clip(tower.clip, str(out_dir), tokenizer=tokenizer)
    return out_dir


def run_pretrain(cfg: PretrainConfig) -> dict:
    start = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    train_files, train_fmt = resolve_shards(cfg.data.train, cfg.data.format)
    tokenizer = prepare_tokenizer(cfg, train_files, train_fmt)
    classnames = list(cfg.eval.classnames)
    if not classnames and cfg.data.eval:
        eval_files, eval_fmt = resolve_shards(cfg.data.eval, cfg.data.format)
        classnames = label_names(eval_files, fmt=eval_fmt)
    print(f"[raylpclip] run {cfg.name}: {len(train_files)} training shards, {len(classnames)} eval classes, "
          f"{cfg.train.num_workers} workers, {cfg.train.steps} steps of {cfg.train.batch_size}", flush=True)

    ensure_ray(cfg.ray)
    result = build_trainer(cfg, tokenizer=tokenizer, classnames=classnames).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name} finished without a checkpoint; see the worker logs above")
    model_dir = export_checkpoint(cfg, result.checkpoint, tokenizer=tokenizer, out_dir=run_dir / "model")
    metrics = result.metrics or {}
    summary = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    summary.update(
        num_classes=len(classnames),
        samples_per_s=metrics.get("train_samples_per_s"),
        wall_s=time.perf_counter() - start,
        run_dir=str(run_dir.resolve()),
        model_dir=str(model_dir.resolve()),
        checkpoint=result.checkpoint.path,
        chance_acc1=1.0 / len(classnames) if classnames else None,
    )
    write_summary(run_dir, summary)
    return summary
