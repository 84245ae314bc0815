"""The training loop's hooks on a Ray Train worker (engine/loop.py calls `report`), shared by every
trainer: the reported metrics (throughput, epoch, skip and retry counts), rank 0's progress line,
evaluation and training curves (engine/metrics_log.py), checkpoints with the data position, and a
failed checkpoint upload stopping the run.

A trainer subclasses `WorkerHooks` for what is its own: what it evaluates and how its line reads
("<its figures> epoch E skipped {...} storage-retries N | <its evaluation>"). `skipped` counts distinct
bad samples (and shards); `sightings {...}` follows it once one was read again, as each epoch reads it
(runtime/cluster/counters.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch

from raylpclip.data.storage import take_failed_uploads
from raylpclip.engine.checkpoint_state import CheckpointError
from raylpclip.engine.loop import LoopState
from raylpclip.engine.metrics_log import MetricsLog
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.engine.run_state import save_run_state
from raylpclip.distributed import all_reduce_sum, gather_objects
from raylpclip.engine.clock import peak_memory_mb
from raylpclip.parallel.fsdp_sharding import gather_whole_state, is_sharded, local_bytes, optimizer_tensors
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.stop_notice import StopWatch
from raylpclip.runtime.train.worker_setup import WorkerPlace, progress, report_checkpoint

SIGHTINGS = "skip_sightings_"  # metrics: how often the skipped samples were read, by reason


def train_storage_dir() -> Path | None:
    """Where the driver put this Train run's storage (the path Ray Train resolved on the driver), when it
    is a local or shared path; None on s3://. Read through Ray Train's storage context, a DeveloperAPI."""
    storage = ray.train.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
        return None
    return Path(storage.storage_fs_path)


def curves_dir(cfg) -> Path | None:
    """The run directory as the driver named it, for rank 0's curves. Train workers run in a working
    directory of Ray's own, where a relative output_dir means nothing: it is then taken from the run's
    Train storage, which is output_dir as the driver resolved it when ray.storage_path is empty. With a
    relative output_dir and a separate ray.storage_path no place is known: None."""
    if cfg.run_dir.is_absolute():
        return cfg.run_dir
    storage = None if cfg.ray.storage_path else train_storage_dir()
    return storage / cfg.name if storage is not None else None


def open_curves(run_dir: Path | None, *, start_step: int) -> MetricsLog | None:
    """The run's curves (engine/metrics_log.py), continued from `start_step`; None, said once, where this
    worker cannot know the run directory."""
    if run_dir is None:
        progress("[raylpclip] no training curves: this worker cannot place the run directory (a relative "
                 "output_dir with ray.storage_path set); give output_dir as an absolute, shared path")
        return None
    return MetricsLog(run_dir, start_step=start_step)


class WorkerHooks:
    """`cfg`: the run config (name, data, train sections); `streams` (runtime/data/batch_stream.py): the
    data position, gathered from every worker and saved with each checkpoint; `counter` and
    `storage_counter`: the run's skip and storage-retry counts; `meta`: extra checkpoint metadata."""

    def __init__(self, *, task, optimizer, scheduler, cfg, place: WorkerPlace, start: LoopState, streams=None,
                 counter=None, storage_counter=None, train_samples: int | None = None, meta: dict | None = None,
                 notice=None):
        self.task, self.optimizer, self.scheduler, self.cfg, self.place = task, optimizer, scheduler, cfg, place
        self.streams, self.counter, self.storage_counter = streams, counter, storage_counter
        self.train_samples, self.meta = train_samples, {"name": cfg.name, **(meta or {})}
        self.start_samples, self.start_time = start.samples_seen, time.perf_counter()
        self.reported_final = False
        self.watch = StopWatch(notice) if notice is not None else None  # runtime/cluster/stop_notice.py
        # The curves are rank 0's, like the progress line: every rank reports the same step.
        self.curves = open_curves(curves_dir(cfg), start_step=start.step) if place.rank == 0 else None

    @property
    def device(self):
        return self.place.device

    def report(self, state: LoopState, metrics: dict, *, save: bool, evaluate: bool, final: bool,
               quiet: bool = False) -> None:
        elapsed = time.perf_counter() - self.start_time
        metrics = dict(metrics, step=state.step, samples_seen=state.samples_seen,
                       train_samples_per_s=(state.samples_seen - self.start_samples) / max(elapsed, 1e-9))
        if self.train_samples:
            metrics["epoch"] = state.samples_seen / self.train_samples
        metrics.update(self.memory_figures())
        metrics.update(self.speed_figures(state, metrics))
        towers = self.eval_towers() if evaluate and self.cfg.data.eval else {}  # every rank: may gather shards
        if self.place.rank == 0:
            if evaluate and self.cfg.data.eval:
                metrics.update(self.evaluate(towers, final=final))
            skips = counters.report(self.counter)
            metrics.update({f"skipped_{k}": v for k, v in skips["skipped"].items()})
            metrics.update({f"{SIGHTINGS}{k}": v for k, v in skips["skipped_sightings"].items()})
            metrics.update(counters.totals(self.storage_counter))
            if not quiet and "loss" in metrics:  # none: a stop's checkpoint right after a logged step
                progress(self.line(state, metrics) + self.tail(metrics) + self.results(metrics))
            if self.curves is not None:
                self.curves.write(state.step, metrics)
                if final:  # closed for good: a write after close would reopen it, purging this run's steps
                    self.curves.close()
                    self.curves = None
        # Every worker takes part in gathering the data position (a collective), rank 0 saves it.
        positions = self.streams.checkpoint_positions() if save and self.streams is not None else None
        # A sharded model: every rank writes (and uploads) its own shards; Ray Train merges them in storage.
        writes = save and (self.place.rank == 0 or is_sharded(unwrap(self.task.model)))
        if writes:
            # Written locally, uploaded to storage in the background with train.async_checkpoint.
            report_checkpoint(metrics, lambda tmp: save_run_state(
                tmp, task=self.task, optimizer=self.optimizer, scheduler=self.scheduler, state=state, meta=self.meta,
                positions=positions, metrics=metrics, rank=self.place.rank, world=self.place.world),
                async_upload=self.cfg.train.async_checkpoint)
        else:
            ray.train.report(metrics, checkpoint=None)
        failed = take_failed_uploads()
        if failed:  # the checkpoint did not reach storage: stop rather than train on without one
            raise CheckpointError(f"checkpoint upload failed after retries: {'; '.join(failed)}")
        self.reported_final |= final

    def report_finished(self, state: LoopState, restored, *, evaluate: bool) -> None:
        """A run restored at its last step (`restored`, runtime/train/worker_checkpoint.py): nothing to
        train; the figures reported at that step (saved in the checkpoint) are reported again. When that
        checkpoint is not Ray Train's latest registered one (a worker lost after the final checkpoint
        reached storage but before Ray Train registered it), the state is registered anew, so that the
        run's result is the final state and not an older checkpoint."""
        if self.place.rank == 0:
            progress(f"[raylpclip] {self.cfg.name} had finished at step {state.step}; nothing left to train")
        curves, self.curves = self.curves, None  # its steps are already in the curves
        if curves is not None:
            curves.close()
        carried = {k: v for k, v in (restored.metrics or {}).items()
                   if k != "train_samples_per_s" and not k.startswith(("skipped_", SIGHTINGS))}
        self.report(state, carried, save=not restored.registered, evaluate=evaluate, final=True, quiet=True)

    def stop_reason(self, state: LoopState) -> str | None:
        """After a step: why the run must stop now (a stop notice seen by any worker), the same on every rank.
        One all-reduce of a flag, every step on CPU; on an accelerator only at log steps, where the report has
        synchronised the host already (a flag read every step would stall the queued kernels). Ray's node
        preemption notice is asked at log steps (train.log_every)."""
        if self.watch is None:
            return None
        log_step = state.step % self.cfg.train.log_every == 0
        if self.device.type != "cpu" and not log_step:
            return None
        # Ray's preemption notice is asked at log steps only: the question is a barrier of all workers.
        mine = self.watch.reason(ask_ray=log_step)
        if not all_reduce_sum(torch.tensor([1.0 if mine else 0.0], device=self.device)).item():
            return None
        reason = next(r for r in gather_objects(mine) if r)  # what some worker saw (every rank is here now)
        self.place.say(f"[raylpclip] {reason}: checkpointing step {state.step} and stopping; the same command "
                       "resumes from it")
        return reason

    def memory_figures(self) -> dict:
        """What this worker (rank 0's, in the line) holds: its peak memory (torch's peak allocation on a GPU, the
        process's peak resident size on CPU) and the bytes of parameters + optimizer state it keeps, a shard of
        them under fsdp: the figures for sizing a cluster (README, "Sharded training")."""
        if self.task is None or self.optimizer is None:  # hooks without a model (tests of the reports alone)
            return {}
        model = unwrap(self.task.model)
        state = local_bytes(model.parameters()) + local_bytes(optimizer_tensors(self.optimizer))
        peak = peak_memory_mb(self.device)
        return {"peak_memory_mb": peak.get("cuda_allocated_mb", peak["rss_mb"]),
                "state_mb": state / 2**20}

    def speed_figures(self, state: LoopState, metrics: dict) -> dict:
        """Figures derived from the window's samples/s (the pretraining hooks add the model's FLOP rate and MFU)."""
        return {}

    def eval_towers(self) -> dict:
        """Every rank, before rank 0 evaluates: the models to evaluate (name -> module; on rank 0). A sharded model
        is gathered whole onto rank 0 first, as every rank must take part (parallel/fsdp_sharding.py)."""
        return {}

    def whole(self, module, make_plain):
        """`module` whole on rank 0 (None elsewhere): itself, or for a sharded one its gathered weights in a plain
        module from `make_plain()`, on this worker's device. Every rank must call it (the gather is collective)."""
        if not is_sharded(module):
            return module
        state = gather_whole_state(module)
        if self.place.rank != 0:
            return None
        with torch.random.fork_rng():  # building a module draws initial weights; training's random stream stays
            plain = make_plain()
        plain.load_state_dict(state)
        return plain.to(self.device)

    def evaluate(self, towers: dict, *, final: bool) -> dict:
        """Rank 0's evaluation of `towers` on the run's eval set (Ray Train's "eval" dataset), as metrics."""
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
        sightings = {k[len(SIGHTINGS):]: v for k, v in m.items() if k.startswith(SIGHTINGS)}
        if any(n > skipped.get(k, 0) for k, n in sightings.items()):
            line += f" sightings {sightings}"
        if m.get("storage_retries"):
            line += f" storage-retries {m['storage_retries']}"
        if m.get("read_retries"):
            line += f" read-retries {m['read_retries']}"
        if "mfu" in m:
            line += f" mfu {100 * m['mfu']:.1f}%"
        if "peak_memory_mb" in m:
            line += f" mem {m['peak_memory_mb'] / 1024:.2f} GiB (state {m['state_mb'] / 1024:.2f})"
        return line
