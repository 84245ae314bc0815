"""The LP-CLIP training loop on one Ray Train worker: its shard of the precomputed features, LP-CLIP
self-training (and the supervised reference), gradients averaged across workers every step.

The worker never passes true labels to self-training: `self_train` takes no labels argument. Labels
are read only when the driver asked for the supervised reference probe.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass

import numpy as np
import ray.train
import torch
from safetensors.torch import save_file

from raylpclip import batch_schema
from raylpclip.batch_schema import FEATURE_PREFIX
from raylpclip.distributed import Collective
from raylpclip.engine.metrics_log import MetricsLog
from raylpclip.methods.lpclip import RoundResult, self_train, student_logits, supervised_probe
from raylpclip.methods.lpclip_config import LPCLIPConfig
from raylpclip.runtime.train.worker_hooks import open_curves, train_storage_dir
from raylpclip.runtime.train.worker_setup import progress, start_worker
from raylpclip.runtime.train.worker_trace import WorkerTrace

HEADS_FILE = "heads.safetensors"


@dataclass
class ProbeWorkerArgs:
    """What the driver hands every probe worker (runtime/train/probe_driver.py)."""

    lpclip: LPCLIPConfig  # with the teacher's logit scale resolved
    zeroshot_weights: np.ndarray  # (C, D): the teacher, and the probes' starting point
    supervised: bool  # also train the labelled reference probe (the only reader of labels)
    threads: int


def load_shard(shard, *, with_labels: bool) -> dict[str, torch.Tensor]:
    """This worker's rows of the feature dataset as in-memory tensors (features are small: N x D), in
    `image_id` order: Ray Data's parallel reads deliver rows in any order, and the probe's shuffling
    seed should give the same probe from the same rows."""
    names = [FEATURE_PREFIX + "weak", FEATURE_PREFIX + "strong", batch_schema.IMAGE_ID] + ([batch_schema.LABEL] if with_labels else [])
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for batch in shard.iter_torch_batches(batch_size=4096):
        for n in names:
            parts[n].append(batch[n])
    if not parts[names[0]]:
        raise RuntimeError("this probe worker received no feature rows; use fewer workers than feature rows")
    data = {n: torch.cat(v) for n, v in parts.items()}
    order = torch.argsort(data.pop(batch_schema.IMAGE_ID), stable=True)
    return {n: v[order] for n, v in data.items()}


def round_figures(result: RoundResult, weak: torch.Tensor, strong: torch.Tensor, cfg: LPCLIPConfig,
                  previous: torch.Tensor | None) -> tuple[dict[str, float], torch.Tensor]:
    """One LP-CLIP round's curve figures on this worker's rows, and its hard pseudo-labels (for the next
    round's change). `coverage`: share of rows the threshold kept; `pseudo_label_fit`: the student's
    agreement with its pseudo-labels on the kept strong views (how well the round fitted them);
    `pseudo_label_change`: share of rows whose label differs from the previous round's (self-training
    settles as it falls)."""
    labels = result.targets if result.targets.ndim == 1 else result.targets.argmax(1)
    kept = result.mask
    predicted = student_logits(result.probe, strong[kept], cfg).argmax(1)
    figures = {"coverage": result.coverage, "pseudo_labelled": int(kept.sum()), "samples": int(weak.shape[0]),
               "pseudo_label_fit": (predicted == labels[kept]).float().mean().item()}
    if previous is not None:
        figures["pseudo_label_change"] = (labels != previous).float().mean().item()
    return figures, labels


def probe_worker(args: ProbeWorkerArgs, *, trace_dir: str | None = None) -> None:
    """`trace_dir`: a directory for fault drills (runtime/train/worker_trace.py; a test binds it with
    functools.partial): the worker writes its pid marker there once its features are in memory, so
    a drill can kill it while it trains rather than while it reads."""
    place = start_worker(threads=args.threads, seed=None)
    world, rank = place.world, place.rank
    supervised = args.supervised
    data = load_shard(ray.train.get_dataset_shard("train"), with_labels=supervised)
    WorkerTrace.from_dir(trace_dir, rank=rank, world=world, start_step=0, accum_steps=1)
    weak, strong = data[FEATURE_PREFIX + "weak"].float(), data[FEATURE_PREFIX + "strong"].float()
    weights = torch.as_tensor(args.zeroshot_weights).float()
    cfg = args.lpclip
    # cfg.batch_size is the global batch: each of the `world` workers takes its share of every step.
    local = dataclasses.replace(cfg, batch_size=max(1, math.ceil(cfg.batch_size / world)))
    collective = Collective(world)
    progress(f"[raylpclip] probe worker {rank}/{world}: {weak.shape[0]} samples x {weak.shape[1]} dims, "
             f"{cfg.rounds} LP-CLIP rounds of {cfg.epochs} epochs")
    heads, metrics, labels = {}, {}, None
    # Rank 0's curves, one step per round, in the run directory: probe_driver keeps the probe's Train run
    # there. A probe has no checkpoint to resume from, so every training starts the curves again at 0.
    curves: MetricsLog | None = open_curves(train_storage_dir(), start_step=0) if rank == 0 else None
    for result in self_train(weak, strong, weights, local, collective=collective):
        heads[f"lpclip-r{result.round}"] = result.probe
        metrics[f"coverage_r{result.round}"] = result.coverage
        progress(f"[raylpclip] LP-CLIP round {result.round} (teacher: {result.teacher}) trained on "
                 f"{result.coverage:.1%} of the samples")
        if curves is not None:
            figures, labels = round_figures(result, weak, strong, local, labels)
            curves.write(result.round, figures)
    if curves is not None:
        curves.close()
    if supervised:
        heads["supervised"] = supervised_probe(strong, data[batch_schema.LABEL], local, init_weights=weights,
                                               collective=collective)
        progress("[raylpclip] supervised reference probe trained")
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tensors = {f"{name}.{part}": getattr(head, part).detach().float().contiguous()
                   for name, head in heads.items() for part in ("weight", "bias")}
        save_file(tensors, f"{tmp}/{HEADS_FILE}")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
