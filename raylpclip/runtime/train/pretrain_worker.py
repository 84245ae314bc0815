"""The per-worker function Ray Train runs for PSD pretraining: Ray calls in, the torch loop inside."""

from __future__ import annotations

import importlib.util
import logging
import posixpath
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch

from raylpclip.config import PretrainConfig, from_dict
from raylpclip.data.mixing import mix_batches
from raylpclip.data.storage import take_failed_uploads
from raylpclip.engine.checkpoint_state import CheckpointError, load_state, save_state
from raylpclip.eval.batch_eval import retrieval_evaluate, zeroshot_evaluate
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.clock import clocked
from raylpclip.engine.pretrain_task import PretrainTask, unwrap
from raylpclip.engine.setup import build_training
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.data import stream_position
from raylpclip.runtime.cluster import counters
from raylpclip.engine.checkpoint_choice import choose
from raylpclip.runtime.train.worker_trace import WorkerTrace
from raylpclip.runtime.data.batch_stream import TrainStreams, shard_batches
from raylpclip.runtime.train.worker_setup import ddp_wrap, report_checkpoint

POSITION_FILE = "data_position.json"


def batch_stream(shard, *, micro_batch: int, cfg: PretrainConfig, source: str = "") -> Iterator[dict]:
    """Endless stream of fixed-size batches from this worker's shard, one Ray Data epoch after another.

    drop_last keeps every worker's batch the same size: the gathered loss needs equal shapes. Plain
    streams without data positions (the pretraining run itself uses TrainStreams, which resumes mid-epoch).
    """
    epoch = 0
    while True:
        produced = 0
        for batch in shard_batches(shard, micro_batch=micro_batch, buffer=cfg.data.shuffle_buffer,
                                   seed=cfg.data.shuffle_seed + epoch):
            produced += 1
            yield batch
        if produced == 0:
            raise RuntimeError(
                f"training data {source or cfg.data.train!r} gave worker no full batch of {micro_batch} samples in an "
                "epoch: too few usable samples for train.batch_size and train.num_workers"
            )
        epoch += 1


def train_batches(cfg: PretrainConfig, *, micro_batch: int, rank: int) -> Iterator[dict]:
    """This worker's batches: its shard of the one training set, or a weighted mix of its shards of
    several (`data.sources`)."""
    sources = cfg.data.train_sources()
    if len(sources) == 1:
        return batch_stream(ray.train.get_dataset_shard("train"), micro_batch=micro_batch, cfg=cfg)
    streams = [batch_stream(ray.train.get_dataset_shard(f"train_{i}"), micro_batch=micro_batch, cfg=cfg, source=s.path)
               for i, s in enumerate(sources)]
    return mix_batches(streams, [s.weight for s in sources], batch_size=micro_batch, seed=cfg.data.shuffle_seed + rank)


class RayHooks:
    """LoopHooks for Ray Train: progress lines, zero-shot eval, checkpoints through ray.train.report."""

    def __init__(self, *, task: PretrainTask, optimizer, scheduler, cfg: PretrainConfig, tokenizer,
                 classnames: list[str], device: torch.device, start: LoopState, counter=None,
                 train_samples: int | None = None, streams: TrainStreams | None = None, storage_counter=None):
        self.task, self.optimizer, self.scheduler = task, optimizer, scheduler
        self.cfg, self.tokenizer, self.classnames, self.device = cfg, tokenizer, classnames, device
        self.counter, self.train_samples = counter, train_samples
        # `streams` (TrainStreams): the data position is gathered from every worker and saved with each
        # checkpoint. `storage_counter`: counts of run-storage retries (S3), shown with the skips.
        self.streams, self.storage_counter = streams, storage_counter
        self.rank = ray.train.get_context().get_world_rank()
        self.start_samples, self.start_time = start.samples_seen, time.perf_counter()
        self.reported_final = False

    def report(self, state: LoopState, metrics: dict, *, save: bool, evaluate: bool, final: bool) -> None:
        elapsed = time.perf_counter() - self.start_time
        metrics = dict(metrics, step=state.step, samples_seen=state.samples_seen,
                       train_samples_per_s=(state.samples_seen - self.start_samples) / max(elapsed, 1e-9))
        if evaluate and self.rank == 0 and self.cfg.data.eval:
            metrics.update(self._evaluate())
        if self.train_samples:
            metrics["epoch"] = state.samples_seen / self.train_samples
        if self.rank == 0:
            metrics.update({f"skipped_{k}": v for k, v in counters.totals(self.counter).items()})
            metrics.update(counters.totals(self.storage_counter))
            self._print(state, metrics)
        # Every worker takes part in gathering the data position (a collective), rank 0 saves it.
        positions = self.streams.checkpoint_positions() if save and self.streams is not None else None
        if save and self.rank == 0:
            # Written locally, uploaded to storage in the background with train.async_checkpoint (worker_setup.py).
            report_checkpoint(metrics, lambda tmp: self._save(state, tmp, positions),
                              async_upload=self.cfg.train.async_checkpoint)
        else:
            ray.train.report(metrics, checkpoint=None)
        failed = take_failed_uploads()
        if failed:  # the checkpoint did not reach storage: stop rather than train on without one
            raise CheckpointError(f"checkpoint upload failed after retries: {'; '.join(failed)}")
        self.reported_final |= final

    def _evaluate(self) -> dict:
        """Zero-shot classification on a labelled eval set; retrieval recall@k on a captioned one."""
        tower = unwrap(self.task.model)
        batches = ray.train.get_dataset_shard("eval").iter_torch_batches(batch_size=self.cfg.eval.batch_size)
        if not self.classnames:
            return retrieval_evaluate(tower, batches, device=self.device, precision=self.cfg.train.precision)
        classifier = zeroshot_classifier(tower, self.tokenizer, self.classnames, self.cfg.eval.templates,
                                         context_length=self.cfg.data.context_length, device=self.device)
        return zeroshot_evaluate(tower, classifier, batches, device=self.device, precision=self.cfg.train.precision)

    def _save(self, state: LoopState, directory: str, positions: list | None = None) -> None:
        extra = {POSITION_FILE: stream_position.dumps(positions, step=state.step)} if positions is not None else None
        save_state(directory, state={
            "task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": state.step, "samples_seen": state.samples_seen,
        }, meta={"step": state.step, "samples_seen": state.samples_seen, "name": self.cfg.name}, extra=extra)

    def _print(self, state: LoopState, m: dict) -> None:
        line = (f"[raylpclip] step {state.step}/{self.cfg.train.steps} loss {m.get('loss', float('nan')):.4f} "
                f"a_t {m.get('psd_alpha', 0):.3f} scale {m.get('logit_scale', 0):.1f} lr {m.get('lr', 0):.2e} "
                f"{m.get('samples_per_s', 0):.0f} samples/s data-wait {100 * m.get('data_wait_fraction', 0):.1f}%")
        if "epoch" in m:
            line += f" epoch {m['epoch']:.2f}"
        skipped = {k[len("skipped_"):]: v for k, v in m.items() if k.startswith("skipped_")}
        if skipped:
            line += f" skipped {skipped}"
        if m.get("storage_retries"):
            line += f" storage-retries {m['storage_retries']}"
        if "acc1" in m:
            line += f" | zero-shot acc1 {m['acc1']:.3f} acc5 {m['acc5']:.3f}"
        if "image_retrieval_recall@5" in m:
            line += (f" | retrieval R@5 image {m['image_retrieval_recall@5']:.3f} "
                     f"text {m['text_retrieval_recall@5']:.3f}")
        progress(line)


@dataclass
class Restored:
    state: LoopState
    positions: list | None = None  # the data position saved with the checkpoint (data/stream_position.py)
    path: str | None = None


def restore_run(task: PretrainTask, optimizer, scheduler, *, run: tuple | None = None, say=None) -> Restored:
    """Load the run's newest complete checkpoint (engine/checkpoint_choice.py): usually Ray's latest, but
    past a damaged one, or a complete one Ray never registered; what was skipped goes to `say`.
    `run`: (filesystem or None for local, run directory path), from the driver."""
    latest = ray.train.get_checkpoint()
    if run is not None:
        fs, run_path = run[0] or pafs.LocalFileSystem(), run[1]
    elif latest is not None:
        fs, run_path = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    else:
        return Restored(LoopState())

    def load(path: str):
        with ray.train.Checkpoint(path, fs).as_directory() as directory:
            state = load_state(directory)
            pos_file = Path(directory) / POSITION_FILE
            return state, (stream_position.loads(pos_file.read_bytes())[1] if pos_file.is_file() else None)

    chosen = choose(fs, run_path, registered=latest.path if latest is not None else None, load=load,
                    warn=say or (lambda line: None))
    if chosen is None:
        return Restored(LoopState())
    found, (state, positions) = chosen
    task.load_state_dict(state["task"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Restored(LoopState(step=int(state["step"]), samples_seen=int(state["samples_seen"])), positions, found.path)


def restore(task: PretrainTask, optimizer, scheduler) -> LoopState:
    """Load the run's latest usable checkpoint, if it has one (Ray finds the run by name)."""
    return restore_run(task, optimizer, scheduler).state


def progress(line: str) -> None:
    # Ray Train patches print() into its logger *and* tees it to stdout, so every line would show
    # twice; the process's real stdout shows it once, in the driver's output and the job logs.
    print(line, file=sys.__stdout__, flush=True)


def quiet_report_logs() -> None:
    """Ray Train V2 logs every report (the whole metrics dict) at INFO from a logger named by its file
    path, outside the "ray.train" logger that RunConfig's LoggingConfig sets; our progress lines say
    the same, shorter."""
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


def pretrain_worker(loop_config: dict) -> None:
    quiet_report_logs()
    cfg = from_dict(PretrainConfig, loop_config["config"])
    tokenizer = loop_config["tokenizer"]
    torch.set_num_threads(cfg.train.threads_per_worker)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    device = ray.train.torch.get_device()
    # Model, optimizer, schedule and task with the train.* switches (engine/setup.py), DDP options from
    # train.ddp_bucket_cap_mb (runtime/train/worker_setup.py).
    t = build_training(cfg, tokenizer=tokenizer, rank=rank, device=device, wrap=ddp_wrap(cfg.train))
    optimizer, scheduler, task = t.optimizer, t.scheduler, t.task
    say = progress if rank == 0 else (lambda line: None)
    restored = restore_run(task, optimizer, scheduler, run=loop_config.get("run_storage"), say=say)
    state = restored.state
    if state.step:
        say(f"[raylpclip] resumed {cfg.name} at step {state.step} ({state.samples_seen} samples seen) "
            f"with {world} workers, from {Path(restored.path).name}")
    elif loop_config.get("elastic"):
        say(f"[raylpclip] training with {world} workers (elastic {loop_config['elastic']})")

    micro = cfg.train.batch_size // (world * cfg.optim.accum_steps)
    trace = WorkerTrace.from_dir(loop_config.get("trace"), rank=rank, world=world, start_step=state.step,
                              accum_steps=cfg.optim.accum_steps)
    streams = TrainStreams(cfg, files=loop_config["train_files"], formats=loop_config["train_formats"],
                           tokenizer=tokenizer, restored=restored.positions, counter=loop_config.get("counter"),
                           trace=trace, filesystems=loop_config.get("train_filesystems"), say=say)
    batches = streams.batches(micro)
    hooks = RayHooks(task=task, optimizer=optimizer, scheduler=scheduler, cfg=cfg, tokenizer=tokenizer,
                     classnames=loop_config["classnames"], device=device, start=state,
                     counter=loop_config.get("counter"), train_samples=loop_config.get("train_samples"),
                     streams=streams, storage_counter=loop_config.get("storage_counter"))
    # Under `raylpclip bench train` a clock times every step and passes the calls through (engine/clock.py).
    loop_hooks, loop_train = clocked(hooks, cfg.train, loop_config.get("bench"), device=device)
    run_loop(task, optimizer=optimizer, scheduler=scheduler, batches=batches, state=state,
             train=loop_train, optim=cfg.optim, hooks=loop_hooks, device=device)
    if not hooks.reported_final:  # re-run of a finished run: nothing to train, still report the result
        hooks.report(state, {}, save=False, evaluate=True, final=True)
