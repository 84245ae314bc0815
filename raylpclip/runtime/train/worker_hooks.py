"""The training loop's hooks on a Ray Train worker (engine/loop.py calls `report`), shared by every
trainer: the reported metrics (throughput, epoch, skip and retry counts), rank 0's progress line and
evaluation, checkpoints with the data position, and a failed checkpoint upload stopping the run.

A trainer subclasses `WorkerHooks` for what is its own: what it evaluates and how its line reads
("<its figures> epoch E skipped {...} storage-retries N | <its evaluation>").
"""

from __future__ import annotations

import time

import ray.train

from raylpclip.data.storage import take_failed_uploads
from raylpclip.engine.checkpoint_state import CheckpointError
from raylpclip.engine.loop import LoopState
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.train.worker_checkpoint import save_run_state
from raylpclip.runtime.train.worker_setup import WorkerPlace, progress, report_checkpoint


class WorkerHooks:
    """`cfg`: the run config (name, data, train sections); `streams` (runtime/data/batch_stream.py): the
    data position, gathered from every worker and saved with each checkpoint; `counter` and
    `storage_counter`: the run's skip and storage-retry counts; `meta`: extra checkpoint metadata."""

    def __init__(self, *, task, optimizer, scheduler, cfg, place: WorkerPlace, start: LoopState, streams=None,
                 counter=None, storage_counter=None, train_samples: int | None = None, meta: dict | None = None):
        self.task, self.optimizer, self.scheduler, self.cfg, self.place = task, optimizer, scheduler, cfg, place
        self.streams, self.counter, self.storage_counter = streams, counter, storage_counter
        self.train_samples, self.meta = train_samples, {"name": cfg.name, **(meta or {})}
        self.start_samples, self.start_time = start.samples_seen, time.perf_counter()
        self.reported_final = False

    @property
    def device(self):
        return self.place.device

    def report(self, state: LoopState, metrics: dict, *, save: bool, evaluate: bool, final: bool) -> None:
        elapsed = time.perf_counter() - self.start_time
        metrics = dict(metrics, step=state.step, samples_seen=state.samples_seen,
                       train_samples_per_s=(state.samples_seen - self.start_samples) / max(elapsed, 1e-9))
        if self.train_samples:
            metrics["epoch"] = state.samples_seen / self.train_samples
        if self.place.rank == 0:
            if evaluate and self.cfg.data.eval:
                metrics.update(self.evaluate(final=final))
            metrics.update({f"skipped_{k}": v for k, v in counters.totals(self.counter).items()})
            metrics.update(counters.totals(self.storage_counter))
            progress(self.line(state, metrics) + self.tail(metrics) + self.results(metrics))
        # Every worker takes part in gathering the data position (a collective), rank 0 saves it.
        positions = self.streams.checkpoint_positions() if save and self.streams is not None else None
        if save and self.place.rank == 0:
            # Written locally, uploaded to storage in the background with train.async_checkpoint.
            report_checkpoint(metrics, lambda tmp: save_run_state(
                tmp, task=self.task, optimizer=self.optimizer, scheduler=self.scheduler, state=state, meta=self.meta,
                positions=positions), async_upload=self.cfg.train.async_checkpoint)
        else:
            ray.train.report(metrics, checkpoint=None)
        failed = take_failed_uploads()
        if failed:  # the checkpoint did not reach storage: stop rather than train on without one
            raise CheckpointError(f"checkpoint upload failed after retries: {'; '.join(failed)}")
        self.reported_final |= final

    def evaluate(self, *, final: bool) -> dict:
        """Rank 0's evaluation on the run's eval set (Ray Train's "eval" dataset), as metrics."""
        return {}

    def line(self, state: LoopState, m: dict) -> str:
        """The progress line's start: the trainer's own training figures."""
        raise NotImplementedError

    def results(self, m: dict) -> str:
        """The progress line's end: the evaluation's figures, when this report has them."""
        return ""

    @staticmethod
    def tail(m: dict) -> str:
        line = f" epoch {m['epoch']:.2f}" if "epoch" in m else ""
        skipped = {k[len("skipped_"):]: v for k, v in m.items() if k.startswith("skipped_")}
        if skipped:
            line += f" skipped {skipped}"
        if m.get("storage_retries"):
            line += f" storage-retries {m['storage_retries']}"
        return line
