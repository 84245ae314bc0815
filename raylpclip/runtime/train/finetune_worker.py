"""The per-worker function Ray Train runs for `ft` / `carft`: Ray calls in, the torch loop inside.

Each worker receives theta_0 (the image tower with its zero-shot head) and the context weights from
the driver through the object store, so workers never load or run the text tower. The trained
ImageClassifier is wrapped in DDP; the frozen copy theta_0 is not (it has no gradients to sync).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train

from raylpclip.commands.finetune import FinetuneConfig
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.optim import build_optimizer, build_scheduler
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.engine.training_setup import fsdp_wrap
from raylpclip.methods.carft import FinetuneTask
from raylpclip.methods.finetune_model import evaluate_classifier, frozen_copy, labelled_only, set_trainable
from raylpclip.runtime.data.batch_stream import TrainStreams
from raylpclip.runtime.train.worker_checkpoint import restore_run
from raylpclip.runtime.train.worker_hooks import WorkerHooks
from raylpclip.runtime.train.worker_setup import ddp_wrap, start_worker


@dataclass
class FinetuneWorkerArgs:
    """What the driver hands every fine-tuning worker (runtime/train/finetune_driver.py)."""

    config: FinetuneConfig
    start: Any  # ObjectRef of {"model": ImageClassifier theta_0, "context": (M, D) or None, "scale": float}
    num_classes: int
    tokenizer: Any  # the model's: a resumed epoch's remainder is decoded with it
    train_files: list[list[str]]  # per source, its whole sorted shard list (positions index into it)
    train_formats: list[str]
    train_filesystems: list[Any]
    run_storage: tuple[Any, str]  # (filesystem or None, run path): where the checkpoints to resume from are
    train_samples: int | None = None
    counter: Any = None  # the run's skip counter (runtime/cluster/counters.py)
    notice: Any = None  # the run's stop notice (runtime/cluster/stop_notice.py)


class FinetuneHooks(WorkerHooks):
    """The classifier's eval accuracy during training (the driver evaluates the final classifiers from
    their saved directories, so not at the final report) and the fine-tuning line."""

    def __init__(self, *, plain, **kwargs):
        super().__init__(**kwargs)
        self.plain = plain  # a fresh unsharded classifier, to hold a sharded one's gathered weights

    def eval_towers(self) -> dict:
        return {"model": self.whole(unwrap(self.task.model), self.plain)}

    def evaluate(self, towers: dict, *, final: bool) -> dict:
        if final:
            return {}
        model = towers["model"]
        was_training = model.training
        model.eval()
        try:
            batches = ray.train.get_dataset_shard("eval").iter_torch_batches(batch_size=self.cfg.eval.batch_size)
            metrics = evaluate_classifier(lambda x: model(x)["logits"], batches, device=self.device,
                                          precision=self.cfg.train.precision)
        finally:
            model.train(was_training)
        return {k: metrics[k] for k in ("acc1", "acc5", "ece", "eval_samples")}

    def line(self, state: LoopState, m: dict) -> str:
        line = (f"[raylpclip] {self.cfg.method} step {state.step}/{self.cfg.train.steps} "
                f"loss {m.get('loss', float('nan')):.4f} ce {m.get('ce_loss', float('nan')):.4f}")
        if "context_kl" in m:
            line += f" kl {m['context_kl']:.5f}"
        return line + (f" train-acc1 {m.get('train_acc1', 0):.3f} lr {m.get('lr', 0):.2e} "
                       f"{m.get('samples_per_s', 0):.0f} samples/s data-wait {100 * m.get('data_wait_fraction', 0):.1f}%")

    def results(self, m: dict) -> str:
        return f" | eval acc1 {m['acc1']:.3f} acc5 {m['acc5']:.3f} ece {m['ece']:.3f}" if "acc1" in m else ""


def _count_skips(counter):
    def on_skip(n: int) -> None:
        if counter is not None:
            counter.add.remote({"no_label": n})
    return on_skip


def finetune_worker(args: FinetuneWorkerArgs) -> None:
    cfg = args.config
    place = start_worker(threads=cfg.train.threads_per_worker, seed=cfg.train.seed)
    start = ray.get(args.start)
    model = start["model"]
    frozen = frozen_copy(model.encoder) if cfg.method == "carft" else None
    model = set_trainable(model, trainable=cfg.trainable, train_head=cfg.train_head)
    if cfg.train.parallelism == "fsdp":  # the classifier and theta_0 sharded alike, one unit per vision block
        model = fsdp_wrap(cfg.train, place.device, lambda m: m.encoder.vision.encoder.layers)(model)
        if frozen is not None:
            frozen = fsdp_wrap(cfg.train, place.device, lambda m: m.vision.encoder.layers, frozen=True)(frozen)
    else:
        model = ddp_wrap(cfg.train)(model)
        if frozen is not None:
            frozen.to(place.device)
    optimizer = build_optimizer(unwrap(model), cfg.optim, fused=place.device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=cfg.train.steps)
    task = FinetuneTask(model, num_classes=args.num_classes, frozen=frozen,
                        context=start["context"] if frozen is not None else None,
                        kl_weight=cfg.carft.kl_weight, scale=start["scale"])
    restored = restore_run(task, optimizer, scheduler, run=args.run_storage, say=place.say)
    state = restored.state
    if state.step:
        place.say(f"[raylpclip] resumed {cfg.name} at step {state.step} ({state.samples_seen} samples seen) "
                  f"from {Path(restored.path).name}")

    micro = cfg.train.batch_size // (place.world * cfg.optim.accum_steps)
    streams = TrainStreams(cfg.data, files=args.train_files, formats=args.train_formats, tokenizer=args.tokenizer,
                           restored=restored.positions, counter=args.counter, filesystems=args.train_filesystems,
                           say=place.say)
    sources = ", ".join(s.path for s in cfg.data.train_sources())
    batches = labelled_only(streams.batches(micro), batch_size=micro, on_skip=_count_skips(args.counter),
                            fail_after=cfg.data.fail_after_bad, source=sources)
    hooks = FinetuneHooks(plain=lambda: ray.get(args.start)["model"], task=task, optimizer=optimizer,
                          scheduler=scheduler, cfg=cfg, place=place, start=state,
                          streams=streams, counter=args.counter, train_samples=args.train_samples,
                          meta={"method": cfg.method}, notice=args.notice)
    run_loop(task, optimizer=optimizer, scheduler=scheduler, batches=batches, state=state,
             train=cfg.train, optim=cfg.optim, hooks=hooks, device=place.device)
    if not hooks.reported_final and not state.stopped:  # restored at the last step: still report the result
        hooks.report_finished(state, restored, evaluate=False)
