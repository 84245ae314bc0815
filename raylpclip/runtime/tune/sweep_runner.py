"""Ray Tune sweeps of PSD pretraining: a Tune *function* per trial builds and fits a TorchTrainer
(Train V2's Tune pattern), reports reach Tune through a Train callback so ASHA can stop trials early.

Layout, for a sweep named NAME with output_dir OUT (storage: ray.storage_path, else OUT):
  OUT/NAME/            results.csv, best.yaml, sweep.png, summary.json, sweep.yaml (the resolved sweep),
                       tokenizer/ (trained once, shared by every trial), data/ (generated demo data)
  STORAGE/NAME/        Tune's experiment (state for Tuner.restore; one dir per trial: TensorBoard events,
                       result.json, params.json)
  STORAGE/NAME/trials/ one Ray Train run per trial (checkpoints), named by trial id

The trial itself: runtime/tune/sweep_trial.py; the search space and its checks: experiments/sweep_space.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import ray
import ray.tune
from omegaconf import OmegaConf

from raylpclip.config import ConfigError, PretrainConfig, from_dict, save_config, to_dict, validate
from raylpclip.data.storage import configure_s3
from raylpclip.experiments import sweep_results as results_io
from raylpclip.experiments.demo_data import point_at, write_synthetic
from raylpclip.experiments.sweep_space import (Dim, SweepSpec, asha_settings, check_same_sweep, corner_configs,
                                               max_concurrent, plain, sweep_plan, trial_config, trial_need)
from raylpclip.runtime.cluster.session import ensure_ray
from raylpclip.runtime.train.pretrain_driver import eval_classnames, prepare_tokenizer
from raylpclip.runtime.train.trainer_factory import inspect_train_data
from raylpclip.runtime.tune.sweep_trial import log, sweep_trial
from raylpclip.summary import write_summary

TOKENIZER_KEYS = ("model.tokenizer", "model.pretrained", "model.vocab_size", "model.tokenizer_samples")


# ---------------------------------------------------------------------------------------------------
# The driver


class ProgressLines(ray.tune.Callback):
    """One line per trial event instead of Tune's status tables."""

    def __init__(self, metric: str, total: int):
        self.metric, self.total = metric, total

    def on_trial_start(self, iteration, trials, trial, **info):
        log(f"trial {trial.trial_id} started: {_values(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        log(f"trial {trial.trial_id} step {result.get('step')}: {self.metric} {result.get(self.metric, float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune marks this trial TERMINATED only after its callbacks ran.
        done = 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        last = trial.last_result or {}
        log(f"trial {trial.trial_id} finished at step {last.get('step')}: {self.metric} "
            f"{last.get(self.metric, float('nan')):.4f} ({done}/{self.total} trials done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        text = str(trial.get_error() or "")
        if not text and trial.error_file and os.path.isfile(trial.error_file):
            text = Path(trial.error_file).read_text(errors="replace")
        log(f"trial {trial.trial_id} failed: {results_io.error_line(text) or 'see its error.txt'}")


def _values(config: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def _fmt(value: Any) -> str:
    value = plain(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_space(dims: list[Dim], search: str) -> dict:
    space = {}
    for d in dims:
        if d.kind == "choice":
            space[d.key] = ray.tune.grid_search(d.args) if search == "grid" else ray.tune.choice(d.args)
        else:
            space[d.key] = getattr(ray.tune, d.kind)(*d.args)  # loguniform, uniform, randint (high excluded)
    return space


def searcher(spec: SweepSpec, concurrent: int):
    s = spec.settings
    if s.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=s.metric, mode=s.mode, seed=s.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # A SearchAlgorithm, not a Searcher: Tune cannot wrap it, so it limits concurrency itself.
    return BasicVariantGenerator(random_state=s.seed if s.search == "random" else None, max_concurrent=concurrent)


def absolute(cfg: PretrainConfig) -> PretrainConfig:
    """Local paths made absolute: trials run in other processes (Tune changes their working directory)."""
    def fix(path: str) -> str:
        return path if (not path or "://" in path) else os.path.abspath(path)

    cfg = from_dict(PretrainConfig, to_dict(cfg))
    cfg.output_dir = fix(cfg.output_dir)
    cfg.data.train, cfg.data.eval = fix(cfg.data.train), fix(cfg.data.eval)
    for src in cfg.data.sources:
        src.path = fix(src.path)
    cfg.model.tokenizer, cfg.model.pretrained = fix(cfg.model.tokenizer), fix(cfg.model.pretrained)
    return cfg


def prepare_data(spec: SweepSpec) -> None:
    """Generated demo data when the sweep asks for it; then the training shards must exist."""
    base = spec.base
    if spec.synthetic is not None:
        point_at(base, spec.synthetic, spec.sweep_dir / "data")
        validate(base)
        write_synthetic(spec.synthetic, spec.sweep_dir / "data")
    if not base.data.train_sources():
        raise ConfigError("config key 'data.train': required (a shard directory, glob, brace range or s3:// URL), "
                          "or data.sources, or a synthetic: section")
    inspect_train_data(base)  # missing shards and eval sets without usable labels fail here, not in every trial
    eval_classnames(base)


def shared_tokenizer(spec: SweepSpec) -> None:
    """Train the BPE tokenizer once for all trials (into the sweep directory) unless the sweep varies it."""
    base = spec.base
    if base.model.tokenizer or base.model.pretrained or any(d.key in TOKENIZER_KEYS for d in spec.dims):
        return
    prepare_tokenizer(base, inspect_train_data(base))
    base.model.tokenizer = str(spec.sweep_dir / "tokenizer")


def _join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])


def build_tuner(spec: SweepSpec, *, trial_base: PretrainConfig, storage: str, concurrent: int,
                asha: dict | None) -> ray.tune.Tuner:
    s = spec.settings
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(sweep_trial, base=to_dict(trial_base), metric=s.metric,
                                 runs_dir=str(Path(trial_base.output_dir) / spec.name / "trials"),
                                 storage_path=_join(storage, spec.name, "trials") if trial_base.ray.storage_path else ""),
        {"CPU": s.trial_cpus},
    )
    experiment = _join(storage, spec.name)
    if ray.tune.Tuner.can_restore(experiment):
        # Errored trials resume too: values that cannot work were refused before the first run, so what
        # is left is transient (out of memory, a lost node); each resumes from its Train checkpoint.
        log(f"resuming sweep {spec.name} from {experiment}: finished trials are kept, unfinished and failed "
            "ones resume from their latest checkpoints")
        return ray.tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    scheduler = None
    if asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="step", **asha)
    from ray.tune.logger import TBXLoggerCallback

    return ray.tune.Tuner(
        trainable,
        param_space=tune_space(spec.dims, s.search),
        tune_config=ray.tune.TuneConfig(metric=s.metric, mode=s.mode, num_samples=s.num_samples,
                                        max_concurrent_trials=concurrent, search_alg=searcher(spec, concurrent),
                                        scheduler=scheduler),
        run_config=ray.tune.RunConfig(name=spec.name, storage_path=storage, verbose=0,
                                      callbacks=[ProgressLines(s.metric, _total(spec)), TBXLoggerCallback()]),
    )


def _total(spec: SweepSpec) -> int:
    if spec.settings.search != "grid":
        return spec.settings.num_samples
    n = spec.settings.num_samples
    for d in spec.dims:
        n *= len(d.args)
    return n


def collect_rows(grid, spec: SweepSpec) -> list[dict]:
    """One row per trial from Tune's results: its sampled values, last reported metric and status."""
    metric = spec.settings.metric
    rows = []
    for result in grid:
        m = result.metrics or {}
        config = result.config or _params(result)
        steps = int(config.get("train.steps", spec.base.train.steps))
        value = m.get(metric)
        rows.append({
            "trial_id": m.get("trial_id") or Path(result.path).name,
            "status": results_io.trial_status(error=result.error is not None, metric=value, step=m.get("step"),
                                              steps=steps),
            **{d.key: plain(config.get(d.key)) for d in spec.dims},
            metric: plain(value), "step": m.get("step"), "time_s": m.get("time_total_s"),
            "checkpoint": m.get("checkpoint_path"),
            "error": results_io.error_line(str(result.error)) if result.error is not None else None,
        })
    return sorted(rows, key=lambda r: r["trial_id"])


def _params(result) -> dict:
    """A trial's sampled values from its params.json: a trial that failed before reporting has no config
    in its (empty) metrics."""
    try:
        with result.filesystem.open_input_stream(f"{result.path}/params.json") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return {}


def run_sweep(spec: SweepSpec) -> dict:
    start = time.perf_counter()
    s = spec.settings
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    configure_s3(spec.base.data.s3)
    prepare_data(spec)
    shared_tokenizer(spec)
    configs = corner_configs(spec)  # every bound and choice validated before any trial starts
    plan = sweep_plan(spec)
    check_same_sweep(spec.sweep_dir / "sweep.yaml", plan)
    OmegaConf.save(OmegaConf.create(plan), str(spec.sweep_dir / "sweep.yaml"))

    ensure_ray(spec.base.ray)
    need = {k: max(trial_need(c).get(k, 0.0) for c in configs) for k in ("CPU", "GPU")}
    need = {k: v for k, v in need.items() if v > 0}
    need["CPU"] += s.trial_cpus
    cluster = ray.cluster_resources()
    concurrent = max_concurrent(cluster, need, s.max_concurrent_trials)
    asha = asha_settings(spec, configs) if s.scheduler == "asha" else None
    storage = spec.base.ray.storage_path or str(Path(spec.base.output_dir).resolve())
    log(f"sweep {spec.name}: {_total(spec)} trials of {', '.join(d.key for d in spec.dims)}; search {s.search}, "
        f"{f'ASHA on {s.metric} ({asha})' if asha else 'no early stopping'}; {concurrent} at a time "
        f"(cluster {_res(cluster)}, a trial needs {_res(need)})")
    log(f"watch: Ray dashboard (Jobs, Train runs); tensorboard --logdir {_join(storage, spec.name)}")

    tuner = build_tuner(spec, trial_base=absolute(spec.base), storage=storage, concurrent=concurrent, asha=asha)
    grid = tuner.fit()
    return write_outputs(spec, grid, start=start, asha=asha, concurrent=concurrent, storage=storage)


def _res(resources: dict) -> str:
    return ", ".join(f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if resources.get(k))


def write_outputs(spec: SweepSpec, grid, *, start: float, asha: dict | None, concurrent: int, storage: str) -> dict:
    s, out = spec.settings, spec.sweep_dir
    rows = collect_rows(grid, spec)
    results_io.write_csv(rows, out / "results.csv", dims=spec.dims, metric=s.metric)
    best = results_io.best_row(rows, metric=s.metric, mode=s.mode)
    best_yaml = None
    if best is not None:
        best_cfg = trial_config(spec.base, {**{d.key: best[d.key] for d in spec.dims}, "name": f"{spec.name}-best"})
        best_yaml = out / "best.yaml"
        save_config(best_cfg, best_yaml)
        results_io.plot(rows, out / "sweep.png", dims=spec.dims, metric=s.metric, mode=s.mode,
                        title=f"sweep {spec.name}: {s.metric} per trial ({s.mode} is better)")
    counts = {st: sum(r["status"] == st for r in rows) for st in
              (results_io.DONE, results_io.STOPPED, results_io.ERROR, results_io.NO_METRIC)}
    summary = {
        "name": spec.name, "metric": s.metric, "mode": s.mode,
        "best_metric": best[s.metric] if best else None, "best_trial": best["trial_id"] if best else None,
        "best_values": {d.key: best[d.key] for d in spec.dims} if best else None,
        "best_config": str(best_yaml.resolve()) if best_yaml else None,
        "trials": len(rows), "status_counts": counts, "search": s.search, "scheduler": s.scheduler,
        "asha": asha, "max_concurrent_trials": concurrent,
        "experiment_path": _join(storage, spec.name), "results_csv": str((out / "results.csv").resolve()),
        "plot": str((out / "sweep.png").resolve()) if best else None,
        "run_dir": str(out.resolve()), "wall_s": time.perf_counter() - start,
    }
    write_summary(out, summary)
    return summary
