"""One trial of a sweep: the Tune function that builds this trial's pretraining config from the sampled
values and fits one TorchTrainer (Train V2's Tune pattern), its reports reaching Tune through a Train
callback so that ASHA can stop it early.
"""

from __future__ import annotations

import os

import ray
import ray.train
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from raylpclip.config import PretrainConfig, save_config
from raylpclip.experiments.sweep_space import trial_config
from raylpclip.runtime.cluster import counters
from raylpclip.runtime.cluster.session import quiet_ray_data
from raylpclip.runtime.train.pretrain_driver import build_trainer, resolve
from raylpclip.runtime.train.trainer_factory import fit


def log(line: str) -> None:
    print(f"[raylpclip] {line}", flush=True)


def fit_config(cfg: PretrainConfig, *, callbacks: tuple = ()) -> ray.train.Result:
    """Fit one pretraining config on the running Ray instance: the driver's steps (shards, tokenizer,
    eval classes, TorchTrainer) without the export. Re-running the same name resumes its Train run."""
    resolved = resolve(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    trainer = build_trainer(cfg, tokenizer=resolved.tokenizer, classnames=resolved.classnames, data=resolved.data,
                            counter=counters.new_counter(), callbacks=callbacks)
    return fit(trainer, cfg.name)


class MetricReportCallback(TuneReportCallback):
    """Forwards the Train reports that carry the sweep's metric to the Tune trial. An eval metric (acc1)
    is only in eval reports; Tune's searchers and schedulers expect it in every result they see."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def address_for_train_helpers() -> None:
    """When ASHA stops a trial, Tune ends the trial's process and with it the Train controller it owns;
    Ray Train's PlacementGroupCleaner (a detached actor) then frees the run's worker placement group. It
    finds the cluster through RAY_ADDRESS, else by looking for GCS processes, which fails on a machine
    running several Ray instances (a developer machine, CI with a second test cluster): the stopped
    trial's worker CPUs would stay reserved until the sweep ends and starve later trials. So this trial's
    Train run gets the address through the environment variables Train hands to its controller (whose
    child actors inherit them). Without that list (another Ray version) nothing changes."""
    try:
        from ray.train.v2._internal import constants
    except ImportError:
        return
    if isinstance(getattr(constants, "ENV_VARS_TO_PROPAGATE", None), set):
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")


def sweep_trial(config: dict, *, base: dict, metric: str, runs_dir: str, storage_path: str) -> None:
    """The Tune function: this trial's overrides on the base config, one TorchTrainer, fitted. The Train
    run is named by the trial id, so a trial restarted after the driver died resumes its checkpoint."""
    quiet_ray_data()  # this process creates the trial's datasets: its DataContext is the one they use
    address_for_train_helpers()
    trial_id = ray.tune.get_context().get_trial_id()
    own = {"name": trial_id, "output_dir": runs_dir, "ray.storage_path": storage_path}
    cfg = trial_config(base, {**config, **own})
    result = fit_config(cfg, callbacks=(MetricReportCallback(metric),))
    if metric not in (result.metrics or {}):
        raise ValueError(f"trial {trial_id} never reported the sweep metric {metric!r}; its last report has "
                         f"{sorted(result.metrics or {})}")


