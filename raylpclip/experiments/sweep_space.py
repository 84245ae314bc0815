"""Sweep configs without Ray: the `sweep:` section, search spaces written against the pretrain keys,
the base config a sweep varies, and how many trials fit on a cluster at once.

A sweep YAML is a pretrain config (inline keys, or `base:` naming a pretrain or demo YAML) plus a
`sweep:` section whose `space` maps the same dotted keys as the command line to search expressions
(experiments/search_expressions.py).

Every trial's config is `load_config(PretrainConfig, base, overrides)`, the path every command uses, so
a sampled value is validated exactly as one typed on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, get_origin, get_type_hints

from omegaconf import OmegaConf

from raylpclip.config import ConfigError, PretrainConfig, flatten, load_config, require, to_dict
from raylpclip.experiments.demo_data import SyntheticDataConfig
from raylpclip.experiments.experiment_file import read_experiment
from raylpclip.experiments.search_expressions import Dim, parse_value

SEARCHES = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "none")
EVAL_METRICS = ("acc1", "acc5", "mean_per_class_recall")  # need a labelled eval set


@dataclass
class SweepConfig:
    """The `sweep:` section of a sweep YAML."""

    metric: str = "acc1"  # a metric the trials report (acc1 needs a labelled data.eval)
    mode: str = "max"  # max | min
    num_samples: int = 8  # trials; with search=grid: repeats of the whole grid
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs (GPUs) hold, see max_concurrent()
    search: str = "optuna"  # optuna | random | grid
    scheduler: str = "asha"  # asha | none
    grace_period: int = 0  # ASHA: steps before a trial can be stopped; 0: the first eval (train.eval_every)
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    seed: int = 0  # search seed (optuna sampler, random search)
    trial_cpus: float = 0.01  # the Tune function only drives a TorchTrainer; its workers reserve their own
    space: dict[str, Any] = field(default_factory=dict)  # "section.key": expression, list or value


@dataclass
class SweepFile:
    """The keys a sweep YAML has beside the pretrain keys."""

    base: str = ""  # a pretrain YAML, or a demo YAML (its `pretrain:` section, data from `synthetic:`)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    synthetic: Optional[SyntheticDataConfig] = None  # generate demo data instead of data.train/data.eval

    def check(self) -> None:
        validate_sweep(self.sweep)


@dataclass
class SweepSpec:
    """A resolved sweep: the base pretrain config, what varies, and how the search runs."""

    base: PretrainConfig
    settings: SweepConfig
    dims: list[Dim]
    fixed: dict[str, Any]  # plain values in `space`: already applied to `base`
    synthetic: Optional[SyntheticDataConfig] = None

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def sweep_dir(self) -> Path:
        return self.base.run_dir


# ---------------------------------------------------------------------------------------------------
# Keys and overrides


def check_key(key: str) -> None:
    """The key names a value of PretrainConfig (the keys `raylpclip pretrain` takes), or ConfigError."""
    node: Any = PretrainConfig
    parts = key.split(".")
    if parts[0] in ("name", "output_dir", "ray"):
        raise ConfigError(f"config key 'sweep.space.{key}': set by the sweep for each trial (name, output_dir) "
                          "or shared by all trials (ray.*); set it outside sweep.space")
    for i, part in enumerate(parts):
        if not is_dataclass(node):
            if get_origin(node) in (dict, list):
                return  # inside a free-form dict or a list (model.overrides.*, data.sources.0.*)
            raise ConfigError(f"config key 'sweep.space.{key}': {'.'.join(parts[:i])!r} is a value, not a section")
        names = [f.name for f in fields(node)]
        if part not in names:
            section = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"config key 'sweep.space.{key}': {'.'.join(parts[:i + 1])!r} is not a pretrain "
                              f"config key; {section} has {names}")
        node = get_type_hints(node)[part]
    if is_dataclass(node):
        raise ConfigError(f"config key 'sweep.space.{key}': names a whole section; sweep one of its keys")


def plain(value: Any) -> Any:
    """Search algorithms hand out numpy scalars; configs and JSON want Python ones."""
    return value.item() if hasattr(value, "item") else value


def trial_config(base: PretrainConfig | dict, values: dict[str, Any], **replace: Any) -> PretrainConfig:
    """One trial's config: the base with the sampled values as overrides, through load_config (the same
    merge and checks as `raylpclip pretrain base.yaml key=value ...`). `replace` sets top-level keys
    (name, output_dir) for the trial's own run."""
    return load_config(PretrainConfig, base, {**{k: plain(v) for k, v in values.items()}, **replace})


# ---------------------------------------------------------------------------------------------------
# Loading a sweep YAML


def load_sweep(path: str | None, overrides: Sequence[str] = ()) -> SweepSpec:
    """defaults <- base YAML <- the sweep YAML's inline keys <- command-line overrides
    (experiments/experiment_file.py). Errors are ConfigError naming the key."""
    sweep_file, base = read_experiment(path, overrides, SweepFile)
    dims, fixed = [], {}
    for key, value in sweep_file.sweep.space.items():
        check_key(key)
        dim = parse_value(key, value)
        if dim is None:
            fixed[key] = value
        else:
            dims.append(dim)
    if not dims:
        raise ConfigError("config key 'sweep.space': expected at least one swept key "
                          "(loguniform/uniform/randint/choice or a list)")
    if fixed:
        base = trial_config(base, fixed)
    spec = SweepSpec(base=base, settings=sweep_file.sweep, dims=dims, fixed=fixed, synthetic=sweep_file.synthetic)
    _check_metric(spec)
    return spec


def _require(ok: bool, key: str, message: str) -> None:
    require(ok, f"sweep.{key}", message)


def validate_sweep(s: SweepConfig) -> None:
    _require(bool(s.metric), "metric", "required (a metric the trials report, e.g. acc1 or loss)")
    _require(s.mode in ("max", "min"), "mode", f"got {s.mode!r}, expected one of ['max', 'min']")
    _require(s.num_samples >= 1, "num_samples", f"got {s.num_samples}, expected >= 1")
    _require(s.max_concurrent_trials >= 0, "max_concurrent_trials", "expected >= 0 (0: sized to the cluster)")
    _require(s.search in SEARCHES, "search", f"got {s.search!r}, expected one of {list(SEARCHES)}")
    _require(s.scheduler in SCHEDULERS, "scheduler", f"got {s.scheduler!r}, expected one of {list(SCHEDULERS)}")
    _require(s.grace_period >= 0, "grace_period", "expected >= 0 (0: the first eval step)")
    _require(s.reduction_factor >= 2, "reduction_factor", f"got {s.reduction_factor}, expected >= 2")
    _require(0 < s.trial_cpus <= 1, "trial_cpus", f"got {s.trial_cpus}, expected in (0, 1]")


def _check_metric(spec: SweepSpec) -> None:
    s, base = spec.settings, spec.base
    if s.metric in EVAL_METRICS or "retrieval_recall@" in s.metric:
        _require(bool(base.data.eval) or spec.synthetic is not None, "metric",
                 f"{s.metric} comes from the eval set, but data.eval is empty")
    if s.search == "grid":
        ranges = [d.key for d in spec.dims if d.kind != "choice"]
        _require(not ranges, "search", f"grid search takes lists or choice(...) only; {ranges} are ranges "
                 "(use search: random or optuna)")
    if s.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("config key 'sweep.search': optuna is not installed "
                              "(pip install optuna, or use search: random)") from None


# ---------------------------------------------------------------------------------------------------
# Checking every trial up front, resources, ASHA settings


def corner_configs(spec: SweepSpec) -> list[PretrainConfig]:
    """The base with each swept key at each of its bounds/choices in turn (the others at base). A value
    that cannot work fails here, naming its key, before any trial starts."""
    configs = []
    for dim in spec.dims:
        for value in dim.corners():
            try:
                configs.append(trial_config(spec.base, {dim.key: value}))
            except ConfigError as exc:
                raise ConfigError(f"config key 'sweep.space.{dim.key}': value {value!r} fails: {exc}") from None
    return configs


def trial_need(cfg: PretrainConfig) -> dict[str, float]:
    """Logical resources one trial holds: the Train workers, the decode actor pools (training, and the
    eval set's while it is evaluated), and one CPU for Ray Data's read tasks (without it, concurrent
    trials can take every CPU and starve the reads they depend on)."""
    pools = 2 if cfg.data.eval else 1
    cpus = (cfg.train.num_workers * cfg.train.cpus_per_worker
            + pools * cfg.data.decode_concurrency * cfg.data.decode_cpus + 1.0)
    need = {"CPU": cpus}
    if cfg.train.use_gpu:
        need["GPU"] = float(cfg.train.num_workers)
    return need


def max_concurrent(cluster: dict[str, float], need: dict[str, float], requested: int = 0) -> int:
    """`requested` when set; else how many trials' needs fit into the cluster's resources at once
    (at least one: a trial that does not fit waits for resources and Ray says so)."""
    if requested > 0:
        return requested
    fits = [int(cluster.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits)) if fits else 1


def asha_settings(spec: SweepSpec, configs: Sequence[PretrainConfig]) -> dict[str, int]:
    """ASHA in optimizer steps: max_t the longest trial, grace period the first eval (or as set)."""
    max_t = max(c.train.steps for c in configs)
    grace = spec.settings.grace_period or min(
        (c.train.eval_every if c.train.eval_every > 0 else c.train.steps) for c in configs)
    if spec.settings.metric not in EVAL_METRICS and "retrieval_recall@" not in spec.settings.metric:
        grace = spec.settings.grace_period or min(c.train.log_every for c in configs)
    _require(grace <= max_t, "grace_period", f"{grace} steps is beyond the longest trial ({max_t} steps)")
    return {"max_t": max_t, "grace_period": grace, "reduction_factor": spec.settings.reduction_factor}


# ---------------------------------------------------------------------------------------------------
# Resuming


RESUME_FREE = ("sweep.max_concurrent_trials", "sweep.trial_cpus")  # may change between a run and its resume


def sweep_plan(spec: SweepSpec) -> dict:
    """What defines a sweep's trials: saved beside it as sweep.yaml, compared when it is re-run."""
    return {"base": to_dict(spec.base), "sweep": OmegaConf.to_container(OmegaConf.structured(spec.settings))}


def check_same_sweep(path: Path, plan: dict) -> None:
    """A re-run resumes only the sweep it started: a changed space or base would mix two experiments
    under one name."""
    if not path.is_file():
        return
    saved, now = flatten(OmegaConf.to_container(OmegaConf.load(path))), flatten(plan)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUME_FREE)
    if changed:
        raise ConfigError(f"sweep {path.parent.name!r} already exists in {path.parent} with other settings "
                          f"({', '.join(changed[:5])}); use another name to start a new sweep")
