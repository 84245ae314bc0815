"""The per-worker function Ray Train runs for PSD pretraining: Ray calls in, the torch loop inside."""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Iterator

import ray.train
import ray.train.torch
import torch

from raylpclip.config import PretrainConfig, from_dict
from raylpclip.engine.checkpoint import load_state, save_state
from raylpclip.engine.evaluate import zeroshot_evaluate
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.optim import build_optimizer, build_scheduler
from raylpclip.engine.pretrain_task import PretrainTask, unwrap
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.models.factory import build_tower


def batch_stream(shard, *, micro_batch: int, cfg: PretrainConfig) -> Iterator[dict]:
    """Endless stream of fixed-size batches from this worker's shard, one Ray Data epoch after another.

    drop_last keeps every worker's batch the same size: the gathered loss needs equal shapes.
    """
    epoch = 0
    buffer = cfg.data.shuffle_buffer or None
    while True:
        produced = 0
        for batch in shard.iter_torch_batches(
            batch_size=micro_batch, drop_last=True, prefetch_batches=2,
            local_shuffle_buffer_size=buffer, local_shuffle_seed=cfg.data.shuffle_seed + epoch if buffer else None,
        ):
            produced += 1
            yield batch
        if produced == 0:
            raise RuntimeError(
                f"training data {cfg.data.train!r} gave worker no full batch of {micro_batch} samples in an "
                "epoch: too few usable samples for train.batch_size and train.num_workers"
            )
        epoch += 1


class RayHooks:
    """LoopHooks for Ray Train: progress lines, zero-shot eval, checkpoints through ray.train.report."""

    def __init__(self, *, task: PretrainTask, optimizer, scheduler, cfg: PretrainConfig, tokenizer,
                 classnames: list[str], device: torch.device, start: LoopState):
        self.task, self.optimizer, self.scheduler = task, optimizer, scheduler
        self.cfg, self.tokenizer, self.classnames, self.device = cfg, tokenizer, classnames, device
        self.rank = ray.train.get_context().get_world_rank()
        self.start_samples, self.start_time = start.samples_seen, time.perf_counter()
        self.reported_final = False

    def report(self, state: LoopState, metrics: dict, *, save: bool, evaluate: bool, final: bool) -> None:
        elapsed = time.perf_counter() - self.start_time
        metrics = dict(metrics, step=state.step, samples_seen=state.samples_seen,
                       train_samples_per_s=(state.samples_seen - self.start_samples) / max(elapsed, 1e-9))
        if evaluate and self.rank == 0 and self.classnames:
            metrics.update(self._zeroshot())
        if self.rank == 0:
            self._print(state, metrics)
        if save and self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                self._save(state, tmp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
        self.reported_final |= final

    def _zeroshot(self) -> dict:
        tower = unwrap(self.task.model)
        classifier = zeroshot_classifier(tower, self.tokenizer, self.classnames, self.cfg.eval.templates,
                                         context_length=self.cfg.data.context_length, device=self.device)
        batches = ray.train.get_dataset_shard("eval").iter_torch_batches(batch_size=self.cfg.eval.batch_size)
        return zeroshot_evaluate(tower, classifier, batches, device=self.device, precision=self.cfg.train.precision)

    def _save(self, state: LoopState, directory: str) -> None:
        save_state(directory, state={
            "task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": state.step, "samples_seen": state.samples_seen,
        }, meta={"step": state.step, "samples_seen": state.samples_seen, "name": self.cfg.name})

    def _print(self, state: LoopState, m: dict) -> None:
        line = (f"[raylpclip] step {state.step}/{self.cfg.train.steps} loss {m.get('loss', float('nan')):.4f} "
                f"a_t {m.get('psd_alpha', 0):.3f} scale {m.get('logit_scale', 0):.1f} lr {m.get('lr', 0):.2e} "
                f"{m.get('samples_per_s', 0):.0f} samples/s data-wait {100 * m.get('data_wait_fraction', 0):.1f}%")
        if "acc1" in m:
            line += f" | zero-shot acc1 {m['acc1']:.3f} acc5 {m['acc5']:.3f}"
        progress(line)


def restore(task: PretrainTask, optimizer, scheduler) -> LoopState:
    """Load the latest reported checkpoint, if this run has one (Ray finds it by run name)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return LoopState()
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
    task.load_state_dict(state["task"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return LoopState(step=int(state["step"]), samples_seen=int(state["samples_seen"]))


def progress(line: str) -> None:
    # Ray Train patches print() into its logger *and* tees it to stdout, so every line would show
    # twice; the process's real stdout shows it once, in the driver's output and the job logs.
    print(line, file=sys.__stdout__, flush=True)


def pretrain_worker(loop_config: dict) -> None:
    cfg = from_dict(PretrainConfig, loop_config["config"])
    tokenizer = loop_config["tokenizer"]
    torch.set_num_threads(cfg.train.threads_per_worker)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    model = ray.train.torch.prepare_model(build_tower(cfg.model, tokenizer=tokenizer))
    device = ray.train.torch.get_device()
    optimizer = build_optimizer(unwrap(model), cfg.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=cfg.train.steps)
    task = PretrainTask(model, psd=cfg.psd, total_steps=cfg.train.steps, seed=cfg.train.seed, rank=rank)
    state = restore(task, optimizer, scheduler)
    if rank == 0 and state.step:
        progress(f"[raylpclip] resumed {cfg.name} at step {state.step} ({state.samples_seen} samples seen)")

    micro = cfg.train.batch_size // (world * cfg.optim.accum_steps)
    batches = batch_stream(ray.train.get_dataset_shard("train"), micro_batch=micro, cfg=cfg)
    hooks = RayHooks(task=task, optimizer=optimizer, scheduler=scheduler, cfg=cfg, tokenizer=tokenizer,
                     classnames=loop_config["classnames"], device=device, start=state)
    run_loop(task, optimizer=optimizer, scheduler=scheduler, batches=batches, state=state,
             train=cfg.train, optim=cfg.optim, hooks=hooks, device=device)
    if not hooks.reported_final:  # re-run of a finished run: nothing to train, still report the result
        hooks.report(state, {}, save=False, evaluate=True, final=True)
