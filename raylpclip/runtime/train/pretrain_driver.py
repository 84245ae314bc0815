"""The pretraining driver: resolve everything before Ray starts, run the TorchTrainer, export, summarise."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

import ray.train
from ray.train.torch import TorchTrainer

from raylpclip.config import PretrainConfig, save_config, to_dict
from raylpclip.data.metadata import label_names, sample_captions
from raylpclip.data.decode import DataError
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.data.storage import arrow_filesystem, configure_s3, storage_filesystem
from raylpclip.engine.checkpoint_state import CheckpointError, load_state, verify_state
from raylpclip.models.clip import export_clip
from raylpclip.models.factory import build_tower
from raylpclip.models.bpe_tokenizer import load_tokenizer, train_tokenizer
from raylpclip.runtime.cluster import counters
from raylpclip.engine.checkpoint_choice import preflight
from raylpclip.runtime.data.decode_pool import eval_dataset
from raylpclip.runtime.train.worker_trace import TRACE_ENV
from raylpclip.runtime.data.shard_reader import train_source
from raylpclip.runtime.train.pretrain_worker import pretrain_worker, progress
from raylpclip.runtime.data.batch_stream import source_names
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.summary import write_summary

SUMMARY_KEYS = ("acc1", "acc5", "mean_per_class_recall", "loss", "logit_scale", "psd_alpha", "step",
                "samples_seen", "data_wait_fraction", "eval_samples", "epoch", "eval_images", "eval_texts")


@dataclass
class TrainData:
    """What the driver learns about the training shards before Ray starts."""

    files: dict[str, list[str]]  # source path -> shard files
    formats: dict[str, str]
    samples: int | None  # from the img2dataset `_stats.json` files, when every shard has one


def inspect_train_data(cfg: PretrainConfig) -> TrainData:
    files, formats = {}, {}
    for src in cfg.data.train_sources():
        files[src.path], formats[src.path] = resolve_shards(src.path, src.format)
    counts = [read_stats(f) for f in files.values()]
    return TrainData(files, formats, None if None in counts else sum(counts))


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


class StorageRetries:
    """on_retry for the run-storage filesystem: one line per retry, and a count in the run's counter
    actor (picklable: it travels with the filesystem to Ray Train's controller and workers)."""

    def __init__(self, counter):
        self.counter = counter

    def __call__(self, what: str) -> None:
        progress(f"[raylpclip] storage: transient error, retrying: {what}")
        if self.counter is not None:
            self.counter.add.remote({"storage_retries": 1})


def run_storage(cfg: PretrainConfig, *, storage_counter=None) -> tuple[str, pafs.FileSystem | None]:
    """Where Ray Train keeps the run (`ray.storage_path`, else `output_dir`) and the filesystem for it:
    on s3:// the endpoint and credentials of `data.s3`, with counted retries (data/storage.py), and the
    path without its scheme (what Ray Train expects beside a filesystem)."""
    storage = cfg.ray.storage_path or str(Path(cfg.output_dir).resolve())
    filesystem = storage_filesystem(storage, cfg.data.s3, on_retry=StorageRetries(storage_counter))
    return (storage.split("://", 1)[1] if filesystem is not None else storage), filesystem


def check_run_checkpoints(cfg: PretrainConfig) -> None:
    """Before Ray starts: one clear line when the run's checkpoints are all broken (see
    engine/checkpoint_choice.py), a warning when the newest is."""
    storage, filesystem = run_storage(cfg)
    local = filesystem is None
    preflight(filesystem or pafs.LocalFileSystem(), f"{storage.rstrip('/')}/{cfg.name}", warn=progress,
              verify=verify_state if local else None)


def build_trainer(cfg: PretrainConfig, *, tokenizer, classnames: list[str], data: TrainData, counter,
                  callbacks: tuple = (), storage_counter=None, extra_loop_config: dict | None = None,
                  data_options=None) -> TorchTrainer:
    """The run's TorchTrainer. `callbacks`: Ray Train UserCallbacks, e.g. one forwarding reports to a Tune trial.

    Training sources read through positioned readers (runtime/data/shard_reader.py), so that every row says
    where it sits and a resumed run can skip what was consumed. With `RAYLPCLIP_WORKER_TRACE=<dir>` in
    the environment the workers record their pids and batches there (runtime/train/worker_trace.py).
    """
    sources = cfg.data.train_sources()
    files = [data.files[s.path] for s in sources]
    formats = [data.formats[s.path] for s in sources]
    # The driver's filesystems (with its S3 credentials) also go to the workers, for the resumed epoch.
    filesystems = [arrow_filesystem(f, cfg.data.s3) for f in files]
    datasets = {name: train_source(f, fmt=fmt, cfg=cfg.data, tokenizer=tokenizer, counter=counter, filesystem=fs)
                for name, f, fmt, fs in zip(source_names(len(sources)), files, formats, filesystems)}
    train_names = list(datasets)
    if cfg.data.eval:
        datasets["eval"] = eval_dataset(cfg.data, tokenizer=tokenizer, counter=counter)
    storage, filesystem = run_storage(cfg, storage_counter=storage_counter)
    elastic = (cfg.train.min_workers, cfg.train.num_workers) if cfg.train.min_workers else None
    return TorchTrainer(
        pretrain_worker,
        train_loop_config={"config": to_dict(cfg), "tokenizer": tokenizer, "classnames": classnames,
                           "counter": counter, "train_samples": data.samples, "train_files": files,
                           "train_formats": formats, "train_filesystems": filesystems,
                           "trace": os.environ.get(TRACE_ENV) or None,
                           "elastic": f"{elastic[0]}-{elastic[1]}" if elastic else None,
                           "storage_counter": storage_counter,
                           # where the workers look for the checkpoint to resume from (engine/checkpoint_choice.py)
                           "run_storage": (filesystem, f"{storage.rstrip('/')}/{cfg.name}"),
                           **(extra_loop_config or {})},  # e.g. {"bench": ...} from `raylpclip bench train`
        scaling_config=ray.train.ScalingConfig(
            num_workers=elastic or cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage, storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            # Ray Train logs every report (the whole metrics dict) at INFO; the workers' progress lines
            # say it shorter. Full logs stay in the session's log files.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        # The eval set goes whole to every worker (rank 0 evaluates); only training data is split.
        # `data_options`: Ray Data ExecutionOptions for the datasets (default: those of the controller's DataContext).
        dataset_config=ray.train.DataConfig(datasets_to_split=train_names, execution_options=data_options),
    )


def _data_error_line(exc: BaseException) -> tuple[type, str] | None:
    """Our DataError's or CheckpointError's message (and which), found in a worker failure (Ray wraps it
    in task/UDF errors and truncates the combined message, so look at each worker's exception and its
    causes)."""
    failures = list(getattr(exc, "worker_failures", {}).values()) + [exc]
    for failure in failures:
        seen = 0
        while failure is not None and seen < 10:
            found = re.search(r"(DataError|CheckpointError): (.+)", str(failure))
            if found:
                return {"DataError": DataError, "CheckpointError": CheckpointError}[found.group(1)], found.group(2).strip()
            failure, seen = failure.__cause__ or failure.__context__, seen + 1
    return None


def fit(trainer: TorchTrainer, name: str):
    """trainer.fit(), with a data or checkpoint error from deep inside a worker raised as one clear line."""
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        found = _data_error_line(exc)
        if found:
            kind, line = found
            raise kind(f"run {name} stopped: {line}") from None
        raise


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
    configure_s3(cfg.data.s3)
    data = inspect_train_data(cfg)
    tokenizer = prepare_tokenizer(cfg, data)
    classnames = eval_classnames(cfg)
    size = f"{data.samples} samples in " if data.samples else ""
    evaluation = f"{len(classnames)} eval classes" if classnames else ("retrieval eval" if cfg.data.eval else "no eval")
    print(f"[raylpclip] run {cfg.name}: {size}{sum(map(len, data.files.values()))} training shards, {evaluation}, "
          f"{cfg.train.num_workers} workers, {cfg.train.steps} steps of {cfg.train.batch_size}", flush=True)

    check_run_checkpoints(cfg)
    ensure_ray(cfg.ray)
    counter, storage_counter = counters.new_counter(), counters.new_counter()
    trainer = build_trainer(cfg, tokenizer=tokenizer, classnames=classnames, data=data, counter=counter,
                            storage_counter=storage_counter)
    result = fit(trainer, cfg.name)
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name} finished without a checkpoint; see the worker logs above")
    model_dir = export_checkpoint(cfg, result.checkpoint, tokenizer=tokenizer, out_dir=run_dir / "model")
    metrics = result.metrics or {}
    summary = {k: v for k, v in metrics.items() if k in SUMMARY_KEYS or "retrieval_recall@" in k}
    summary.update(
        num_classes=len(classnames),
        samples_per_s=metrics.get("train_samples_per_s"),
        wall_s=time.perf_counter() - start,
        run_dir=str(run_dir.resolve()),
        model_dir=str(model_dir.resolve()),
        checkpoint=result.checkpoint.path,
        chance_acc1=1.0 / len(classnames) if classnames else None,
        train_samples=data.samples,
        skipped=counters.totals(counter),
        storage_retries=counters.totals(storage_counter).get("storage_retries", 0),
    )
    write_summary(run_dir, summary)
    return summary
