"""The per-worker function Ray Train runs for PSD pretraining: Ray calls in, the torch loop inside."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch

from raylpclip.config import PretrainConfig
from raylpclip.engine.clock import clocked
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.model_flops import lock_kwargs, mfu, peak_flops, train_flops_per_sample
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.engine.training_setup import build_training
from raylpclip.eval.batch_eval import retrieval_evaluate, zeroshot_evaluate
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.models.tower_factory import build_tower
from raylpclip.runtime.data.batch_stream import TrainStreams
from raylpclip.runtime.train.worker_checkpoint import restore_run
from raylpclip.runtime.train.worker_hooks import WorkerHooks
from raylpclip.runtime.train.worker_setup import ddp_wrap, start_worker
from raylpclip.runtime.train.worker_trace import WorkerTrace


@dataclass
class PretrainWorkerArgs:
    """What the driver hands every pretraining worker (runtime/train/pretrain_driver.py)."""

    config: PretrainConfig
    tokenizer: Any
    classnames: list[str]  # zero-shot classes of the eval set; empty: a retrieval eval set (or none)
    train_files: list[list[str]]  # per source, its whole sorted shard list (positions index into it)
    train_formats: list[str]
    train_filesystems: list[Any]  # the driver's filesystems (with its S3 credentials), for a resumed epoch
    run_storage: tuple[Any, str]  # (filesystem or None, run path): where the checkpoints to resume from are
    train_samples: int | None = None  # from _stats.json, for the epoch figure
    counter: Any = None  # the run's skip counter (runtime/cluster/counters.py)
    storage_counter: Any = None  # the run's storage-retry counter
    elastic: str | None = None  # "min-max" workers of an elastic group, for the first line
    trace: str | None = None  # RAYLPCLIP_WORKER_TRACE's directory (runtime/train/worker_trace.py)
    bench: dict | None = field(default=None)  # `raylpclip bench train`'s clock settings (engine/clock.py)
    notice: Any = None  # the run's stop notice (runtime/cluster/stop_notice.py)


class PretrainHooks(WorkerHooks):
    """Zero-shot evaluation (or retrieval recall on a captioned eval set) and the pretraining line."""

    def __init__(self, *, tokenizer, classnames: list[str], **kwargs):
        super().__init__(**kwargs)
        self.tokenizer, self.classnames = tokenizer, classnames
        self.flops = None  # model FLOPs per training sample: with patch dropout, without
        self.peak = None  # the accelerator's peak FLOP/s, where known

    def speed_figures(self, state: LoopState, metrics: dict) -> dict:
        """The model's FLOP rate per worker and, where the accelerator's peak is known (a table of GPUs, or
        train.peak_tflops), MFU: samples/s x model FLOPs per sample / (workers x peak) (engine/model_flops.py)."""
        if "samples_per_s" not in metrics:
            return {}
        if self.flops is None:  # once per run: the model's FLOPs and the accelerator's peak do not change
            config, cfg = unwrap(self.task.model).clip.config, self.cfg
            common = dict(context_length=cfg.data.context_length, teacher_forwards=int(cfg.psd.teacher == "ema"))
            locks = lock_kwargs(cfg.model)
            # Patch dropout ends at train.patch_dropout_until_step: the steps after it cost the whole image.
            self.flops = [train_flops_per_sample(config, **common, **locks)["total"],
                          train_flops_per_sample(config, **common, **dict(locks, patch_dropout=0.0))["total"]]
            name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
            self.peak = peak_flops(name, override_tflops=cfg.train.peak_tflops)
        until = self.cfg.train.patch_dropout_until_step
        flops = self.flops[1 if until and state.step > until else 0]
        out = {"model_tflops_per_worker": metrics["samples_per_s"] * flops / self.place.world / 1e12}
        if self.peak:
            out["mfu"] = mfu(metrics["samples_per_s"], flops, peak_flops_per_device=self.peak, devices=self.place.world)
        return out

    def eval_towers(self) -> dict:
        def plain():
            return build_tower(self.cfg.model, tokenizer=self.tokenizer, loss=self.cfg.loss)

        towers = {"": self.whole(unwrap(self.task.model), plain)}
        if self.task.weights_ema is not None:  # the EMA weights too, their figures named ema_<figure>
            towers["ema_"] = self.whole(self.task.weights_ema.module, plain)
        return towers

    def evaluate(self, towers: dict, *, final: bool) -> dict:
        metrics = self.evaluate_tower(towers[""])
        if "ema_" in towers:
            counts = ("eval_samples", "eval_images", "eval_texts")
            metrics.update({f"ema_{k}": v for k, v in self.evaluate_tower(towers["ema_"]).items() if k not in counts})
        return metrics

    def evaluate_tower(self, tower) -> dict:
        precision = self.cfg.train.precision
        shard = ray.train.get_dataset_shard("eval")
        metrics = {}
        if not self.classnames or self.cfg.eval.retrieval:
            batches = shard.iter_torch_batches(batch_size=self.cfg.eval.batch_size)
            metrics.update(retrieval_evaluate(tower, batches, device=self.device, precision=precision))
        if self.classnames:
            classifier = zeroshot_classifier(tower, self.tokenizer, self.classnames, self.cfg.eval.templates,
                                             context_length=self.cfg.data.context_length, device=self.device)
            batches = shard.iter_torch_batches(batch_size=self.cfg.eval.batch_size)
            metrics.update(zeroshot_evaluate(tower, classifier, batches, device=self.device, precision=precision))
        return metrics

    def line(self, state: LoopState, m: dict) -> str:
        bias = f"bias {m['logit_bias']:.2f} " if "logit_bias" in m else ""  # SigLIP's (loss.kind=siglip)
        return (f"[raylpclip] step {state.step}/{self.cfg.train.steps} loss {m.get('loss', float('nan')):.4f} "
                f"a_t {m.get('psd_alpha', 0):.3f} scale {m.get('logit_scale', 0):.1f} {bias}lr {m.get('lr', 0):.2e} "
                f"{m.get('samples_per_s', 0):.0f} samples/s data-wait {100 * m.get('data_wait_fraction', 0):.1f}%")

    def results(self, m: dict) -> str:
        line = f" | zero-shot acc1 {m['acc1']:.3f} acc5 {m['acc5']:.3f}" if "acc1" in m else ""
        if "ema_acc1" in m:
            line += f" ema_acc1 {m['ema_acc1']:.3f} ema_acc5 {m['ema_acc5']:.3f}"
        if "image_retrieval_recall@5" in m:
            line += (f" | retrieval R@5 image {m['image_retrieval_recall@5']:.3f} "
                     f"text {m['text_retrieval_recall@5']:.3f}")
        if "ema_image_retrieval_recall@5" in m:
            line += (f" ema image {m['ema_image_retrieval_recall@5']:.3f} "
                     f"text {m['ema_text_retrieval_recall@5']:.3f}")
        return line


def pretrain_worker(args: PretrainWorkerArgs) -> None:
    cfg = args.config
    place = start_worker(threads=cfg.train.threads_per_worker, seed=cfg.train.seed)  # identical initial weights
    # Model, optimizer, schedule and task with the train.* switches (engine/training_setup.py), DDP options from
    # train.ddp_bucket_cap_mb (runtime/train/worker_setup.py).
    t = build_training(cfg, tokenizer=args.tokenizer, rank=place.rank, device=place.device, wrap=ddp_wrap(cfg.train))
    restored = restore_run(t.task, t.optimizer, t.scheduler, run=args.run_storage, say=place.say)
    state = restored.state
    if state.step:
        place.say(f"[raylpclip] resumed {cfg.name} at step {state.step} ({state.samples_seen} samples seen) "
                  f"with {place.world} workers, from {Path(restored.path).name}")
    elif args.elastic:
        place.say(f"[raylpclip] training with {place.world} workers (elastic {args.elastic})")

    micro = cfg.train.batch_size // (place.world * cfg.optim.accum_steps)
    trace = WorkerTrace.from_dir(args.trace, rank=place.rank, world=place.world, start_step=state.step,
                                 accum_steps=cfg.optim.accum_steps)
    streams = TrainStreams(cfg.data, files=args.train_files, formats=args.train_formats, tokenizer=args.tokenizer,
                           restored=restored.positions, counter=args.counter, trace=trace,
                           filesystems=args.train_filesystems, say=place.say)
    hooks = PretrainHooks(task=t.task, optimizer=t.optimizer, scheduler=t.scheduler, cfg=cfg, place=place,
                          start=state, streams=streams, counter=args.counter, storage_counter=args.storage_counter,
                          train_samples=args.train_samples, tokenizer=args.tokenizer, classnames=args.classnames,
                          notice=args.notice)
    # Under `raylpclip bench train` a clock times every step and passes the calls through (engine/clock.py).
    loop_hooks, loop_train = clocked(hooks, cfg.train, args.bench, device=place.device)
    run_loop(t.task, optimizer=t.optimizer, scheduler=t.scheduler, batches=streams.batches(micro), state=state,
             train=loop_train, optim=cfg.optim, hooks=loop_hooks, device=place.device)
    if not hooks.reported_final and not state.stopped:  # restored at the last step: still report the result
        hooks.report_finished(state, restored, evaluate=True)
