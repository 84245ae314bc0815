"""Running a study on Ray (its plan: experiments/study_plan.py): the world's splits written once, each
pretraining cell given its seed's nested subset of the training shards, then every cell in dependency
order, `study.parallel` at a time (Ray tasks; in this process when 1), the finished ones skipped. After
every cell the results, claims and report are rewritten, so a long study can be watched.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from raylpclip.config import ConfigError, save_config
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.experiments.scaling_plan import select_shards, shard_pattern
from raylpclip.experiments.study_claims import decide
from raylpclip.experiments.study_plan import Cell, StudyPlan, with_subset
from raylpclip.experiments.study_report import design_status, write_report
from raylpclip.experiments.study_results import collect
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.runtime.tune.study_cells import finished, run_cell
from raylpclip.runtime.tune.study_world import context_templates, write_world
from raylpclip.summary import write_summary


def log(line: str) -> None:
    print(f"[raylpclip] study {line}", flush=True)


def assign_subsets(plan: StudyPlan) -> StudyPlan:
    """Every pretraining cell's `data.train`: its seed's subset of round(size * shards) training shards,
    nested across sizes (scaling_plan.select_shards); distinct sizes must select distinct shard counts."""
    files, _ = resolve_shards(str(plan.split("pretrain")), "webdataset")
    counts = {size: len(select_shards(files, size, 0)) for size in plan.cfg.sizes}
    if len(set(counts.values())) < len(counts):
        raise ConfigError(f"config key 'sizes': {plan.cfg.sizes} select {counts} of {len(files)} shards; whole shards "
                          "are the unit, so use coarser sizes or smaller world.samples_per_shard")
    cells = []
    for cell in plan.cells:
        if cell.kind == "pretrain":
            chosen = select_shards(files, cell.tags["size"], cell.tags["seed"])
            cell = with_subset(cell, str(plan.split("pretrain")) if len(chosen) == len(files) else shard_pattern(chosen))
            cell.tags["train_samples"] = read_stats(chosen)
        elif cell.kind == "headroom":
            cell.config.contexts = context_templates(plan.cfg.world)
        cells.append(cell)
    plan.cells = cells
    return plan


@ray.remote(num_cpus=0.01)  # the task only drives its run: the run's own workers and actors reserve CPUs
def _remote(cell: Cell) -> dict:
    return run_cell(cell)


def _report(plan: StudyPlan, status: dict) -> dict[str, Any]:
    rows = collect(plan)
    claims = decide(plan, rows)
    return {"claims": claims, **write_report(plan, rows, claims, status)}


def run_study(plan: StudyPlan) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = plan.cfg
    plan.dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, plan.dir / "study.yaml")
    had_results = any((plan.dir / kind).is_dir() for kind in ("pretrain", "probe", "finetune"))
    status = design_status(plan, had_results)
    ensure_ray(cfg.ray)
    write_world(plan)
    assign_subsets(plan)
    done: set[str] = set()
    for cell in plan.cells:
        if finished(cell) is not None:
            done.add(cell.id)
    skipped = len(done)
    log(f"{cfg.name}: {len(plan.cells)} cells ({skipped} finished before), {cfg.parallel} at a time; output {plan.dir}")
    running: dict[Any, Cell] = {}
    pending = [c for c in plan.cells if c.id not in done]
    ran = 0
    outputs = _report(plan, status)
    while pending or running:
        ready = [c for c in pending if all(n in done for n in c.needs)]
        if not ready and not running:
            raise RuntimeError(f"study cells wait on cells that never finish: {[c.id for c in pending][:5]}")
        for cell in ready[:max(0, cfg.parallel - len(running))]:
            pending.remove(cell)
            log(f"cell {cell.id} starts ({len(done)}/{len(plan.cells)} done)")
            if cfg.parallel == 1:  # in this process: its lines print as they come
                run_cell(cell)
                done.add(cell.id)
                ran += 1
                outputs = _report(plan, status)
            else:
                running[_remote.remote(cell)] = cell
        if running:
            finished_refs, _ = ray.wait(list(running), num_returns=1)
            cell = running.pop(finished_refs[0])
            ray.get(finished_refs[0])  # a failed cell stops the study with its error
            done.add(cell.id)
            ran += 1
            log(f"cell {cell.id} finished")
            outputs = _report(plan, status)
    summary = {"name": cfg.name, "run_dir": str(plan.dir), "design_hash": plan.design_hash,
               "design_changed_after_results": status["changed"], "cells": len(plan.cells), "cells_run": ran,
               "cells_skipped": skipped, "wall_s": time.perf_counter() - start, **outputs}
    write_summary(plan.dir, summary)
    return summary
