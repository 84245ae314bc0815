"""The per-worker function Ray Train runs for `ft` / `carft`: Ray calls in, the torch loop inside.

Each worker receives theta_0 (the image tower with its zero-shot head) and the context weights from
the driver through the object store, so workers never load or run the text tower. The trained
ImageClassifier is wrapped in DDP; the frozen copy theta_0 is not (it has no gradients to sync).
"""

from __future__ import annotations

import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch

from raylpclip.config import from_dict
from raylpclip.engine.checkpoint_state import load_state, save_state
from raylpclip.engine.loop import LoopState, run_loop
from raylpclip.engine.optim import build_optimizer, build_scheduler
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.methods.carft import FinetuneTask
from raylpclip.methods.finetune_config import FinetuneConfig
from raylpclip.methods.finetune_model import evaluate_classifier, frozen_copy, labelled_only, set_trainable
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.train.pretrain_worker import progress, quiet_report_logs, train_batches


class FinetuneHooks:
    """LoopHooks for Ray Train: progress lines, the classifier's eval accuracy during training (the
    driver evaluates the final classifiers from their saved directories), checkpoints via ray.train.report."""

    def __init__(self, *, task: FinetuneTask, optimizer, scheduler, cfg: FinetuneConfig, device: torch.device,
                 start: LoopState, counter=None, train_samples: int | None = None):
        self.task, self.optimizer, self.scheduler, self.cfg, self.device = task, optimizer, scheduler, cfg, device
        self.counter, self.train_samples = counter, train_samples
        self.rank = ray.train.get_context().get_world_rank()
        self.start_samples, self.start_time = start.samples_seen, time.perf_counter()
        self.reported_final = False

    def report(self, state: LoopState, metrics: dict, *, save: bool, evaluate: bool, final: bool) -> None:
        elapsed = time.perf_counter() - self.start_time
        metrics = dict(metrics, step=state.step, samples_seen=state.samples_seen,
                       train_samples_per_s=(state.samples_seen - self.start_samples) / max(elapsed, 1e-9))
        if self.train_samples:
            metrics["epoch"] = state.samples_seen / self.train_samples
        if self.rank == 0:
            if evaluate and not final and self.cfg.data.eval:
                metrics.update(self._evaluate())
            metrics.update({f"skipped_{k}": v for k, v in counters.totals(self.counter).items()})
            self._print(state, metrics)
        if save and self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_state(tmp, state={"task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
                                       "scheduler": self.scheduler.state_dict(), "step": state.step,
                                       "samples_seen": state.samples_seen},
                           meta={"step": state.step, "samples_seen": state.samples_seen, "name": self.cfg.name,
                                 "method": self.cfg.method})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
        self.reported_final |= final

    def _evaluate(self) -> dict:
        model = unwrap(self.task.model)
        was_training = model.training
        model.eval()
        try:
            batches = ray.train.get_dataset_shard("eval").iter_torch_batches(batch_size=self.cfg.eval.batch_size)
            metrics = evaluate_classifier(lambda x: model(x)["logits"], batches, device=self.device,
                                          precision=self.cfg.train.precision)
        finally:
            model.train(was_training)
        return {k: metrics[k] for k in ("acc1", "acc5", "ece", "eval_samples")}

    def _print(self, state: LoopState, m: dict) -> None:
        line = (f"[raylpclip] {self.cfg.method} step {state.step}/{self.cfg.train.steps} "
                f"loss {m.get('loss', float('nan')):.4f} ce {m.get('ce_loss', float('nan')):.4f}")
        if "context_kl" in m:
            line += f" kl {m['context_kl']:.5f}"
        line += (f" train-acc1 {m.get('train_acc1', 0):.3f} lr {m.get('lr', 0):.2e} {m.get('samples_per_s', 0):.0f} "
                 f"samples/s data-wait {100 * m.get('data_wait_fraction', 0):.1f}%")
        if "epoch" in m:
            line += f" epoch {m['epoch']:.2f}"
        skipped = {k[len("skipped_"):]: v for k, v in m.items() if k.startswith("skipped_")}
        if skipped:
            line += f" skipped {skipped}"
        if "acc1" in m:
            line += f" | eval acc1 {m['acc1']:.3f} acc5 {m['acc5']:.3f} ece {m['ece']:.3f}"
        progress(line)


def restore(task: FinetuneTask, optimizer, scheduler) -> LoopState:
    """Load the latest reported checkpoint of this run, if any (Ray Train finds it by run name)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return LoopState()
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
    task.load_state_dict(state["task"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return LoopState(step=int(state["step"]), samples_seen=int(state["samples_seen"]))


def _count_skips(counter):
    def on_skip(n: int) -> None:
        if counter is not None:
            counter.add.remote({"no_label": n})
    return on_skip


def finetune_worker(loop_config: dict) -> None:
    quiet_report_logs()
    cfg = from_dict(FinetuneConfig, loop_config["config"])
    torch.set_num_threads(cfg.train.threads_per_worker)
    torch.manual_seed(cfg.train.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    start = ray.get(loop_config["start"])  # {"model": ImageClassifier theta_0, "context": (M, D) or None, ...}
    model = start["model"]
    frozen = frozen_copy(model.encoder) if cfg.method == "carft" else None
    model = ray.train.torch.prepare_model(set_trainable(model, trainable=cfg.trainable, train_head=cfg.train_head))
    device = ray.train.torch.get_device()
    if frozen is not None:
        frozen.to(device)
    optimizer = build_optimizer(unwrap(model), cfg.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=cfg.train.steps)
    task = FinetuneTask(model, num_classes=len(loop_config["classnames"]), frozen=frozen,
                        context=start["context"] if frozen is not None else None,
                        kl_weight=cfg.carft.kl_weight, scale=start["scale"])
    state = restore(task, optimizer, scheduler)
    if rank == 0 and state.step:
        progress(f"[raylpclip] resumed {cfg.name} at step {state.step} ({state.samples_seen} samples seen)")

    micro = cfg.train.batch_size // (world * cfg.optim.accum_steps)
    counter = loop_config.get("counter")
    sources = ", ".join(s.path for s in cfg.data.train_sources())
    batches = labelled_only(train_batches(cfg, micro_batch=micro, rank=rank), batch_size=micro,
                            on_skip=_count_skips(counter), fail_after=cfg.data.fail_after_bad, source=sources)
    hooks = FinetuneHooks(task=task, optimizer=optimizer, scheduler=scheduler, cfg=cfg, device=device, start=state,
                          counter=counter, train_samples=loop_config.get("train_samples"))
    run_loop(task, optimizer=optimizer, scheduler=scheduler, batches=batches, state=state,
             train=cfg.train, optim=cfg.optim, hooks=hooks, device=device)
    if not hooks.reported_final:  # re-run of a finished run: nothing to train, still report the result
        hooks.report(state, {}, save=False, evaluate=False, final=True)
