"""Data-size scaling experiments: one pretraining recipe at several fractions of the training shards and
several methods (CLIP vs PSD), run one point after another on a shared Ray instance.

A scaling YAML holds a pretraining config (inline, and/or `base: other.yaml` merged under it), a
`scaling:` section and, optionally, a `synthetic:` section (the demo's generated data, written once
into the experiment directory). Each (fraction, method) point is an ordinary `run_pretrain` run in
`<output_dir>/<name>/<method>-f<fraction>/`; a point whose summary.json exists is not run again, so an
interrupted experiment resumes (and a half-finished point resumes from its own checkpoint).

Data subsets are whole shards: img2dataset shards are the unit the readers list, split across workers
and count (`_stats.json`), so a subset of shards keeps every reader, the epoch count and the reported
sample count exact. Shards are drawn from one seeded permutation, so every smaller subset is contained
in every larger one (the sizes are nested, as in a real data-scaling study).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from raylpclip.config import ConfigError, PretrainConfig, flatten, load_config, require, to_dict, validate
from raylpclip.data.shard_files import read_stats, resolve_shards
from raylpclip.experiments import scaling_report as report
from raylpclip.experiments.demo_data import SyntheticDataConfig
from raylpclip.experiments.experiment_file import read_experiment

DEFAULT_METHODS = {"clip": {"psd.a_max": 0.0}, "psd": {"psd.a_max": 0.5}}
# The scaling experiment decides these per point; a method override may not.
RESERVED_KEYS = ("name", "output_dir", "data.train", "data.sources", "data.eval")


@dataclass
class ScalingSection:
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    methods: dict[str, Any] = field(default_factory=dict)  # empty: DEFAULT_METHODS (a merge would add to them)
    metric: str = "acc1"
    baseline: str = "clip"  # the gain is treatment - baseline at each data size
    treatment: str = "psd"
    steps: Optional[str] = None  # "fixed": train.steps at every size (compute-matched); the default
    epochs: Optional[float] = None  # N: steps = ceil(N * train_samples / batch_size) (steps scale with data)
    seed: int = 0  # which shards each fraction gets


@dataclass
class ScalingExperiment:
    base: PretrainConfig  # the config every point starts from
    section: ScalingSection
    synthetic: Optional[SyntheticDataConfig] = None  # generated demo data, or None for shards on disk

    @property
    def name(self) -> str:
        return str(self.base.name)

    @property
    def out_dir(self) -> Path:
        return Path(str(self.base.output_dir)) / self.name


@dataclass
class Point:
    method: str
    fraction: float
    shards: int  # per source, summed
    train_samples: Optional[int]
    cfg: PretrainConfig

    @property
    def name(self) -> str:
        return point_name(self.method, self.fraction)


def point_name(method: str, fraction: float) -> str:
    return f"{method}-f{fraction:g}"


# ---------------------------------------------------------------------------------------------- config

@dataclass
class ScalingFile:
    """The keys a scaling YAML has beside the pretraining keys (experiments/experiment_file.py)."""

    base: str = ""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    synthetic: Optional[SyntheticDataConfig] = None


def load_scaling(path: str | None, overrides: Sequence[str] = ()) -> ScalingExperiment:
    """`base:` <- the YAML's own pretraining keys <- command-line `key=value`, plus the scaling and
    synthetic sections. Fails with ConfigError naming the key."""
    # The default methods go in before the command line, so `scaling.methods.psd.psd.a_max=0.3` tweaks
    # the default psd method instead of replacing both methods with that one.
    own, base = read_experiment(path, overrides, ScalingFile, defaults={"scaling.methods": DEFAULT_METHODS})
    exp = ScalingExperiment(base=base, section=own.scaling, synthetic=own.synthetic)
    check_experiment(exp)
    return exp


def check_experiment(exp: ScalingExperiment) -> None:
    """Everything that can be checked without listing shards: the scaling section, and every method's
    pretraining config (so a typo in the last method fails before the first point trains)."""
    s = exp.section
    require(len(s.fractions) > 0, "scaling.fractions", "expected a non-empty list of fractions in (0, 1]")
    for f in s.fractions:
        require(0.0 < f <= 1.0, "scaling.fractions", f"got {f}, expected every fraction in (0, 1]")
    require(len(set(s.fractions)) == len(s.fractions), "scaling.fractions", f"got {s.fractions}, expected distinct values")
    require(s.metric in report.METRICS, "scaling.metric", f"got {s.metric!r}, expected one of {list(report.METRICS)}")
    require(s.steps in (None, "fixed"), "scaling.steps", f"got {s.steps!r}, expected 'fixed' (or use scaling.epochs: N)")
    require(s.steps is None or s.epochs is None, "scaling.epochs",
            "give either scaling.steps: fixed or scaling.epochs: N, not both")
    require(s.epochs is None or s.epochs > 0, "scaling.epochs", f"got {s.epochs}, expected > 0")
    for role in ("baseline", "treatment"):
        require(getattr(s, role) in s.methods, f"scaling.{role}",
                f"got {getattr(s, role)!r}, expected one of the methods {list(s.methods)}")
    require(s.baseline != s.treatment, "scaling.treatment", "expected a method other than scaling.baseline")
    for method, overrides in s.methods.items():
        require(bool(method) and "/" not in method and method not in (".", ".."), "scaling.methods",
                f"method name {method!r} is not a plain directory name")
        require(overrides is None or isinstance(overrides, dict), f"scaling.methods.{method}",
                f"expected a mapping of config keys to values, got {overrides!r}")
    if exp.synthetic is None:
        require(bool(exp.base.data.train_sources()), "data.train",
               "required (a shard directory, glob, brace range or s3:// URL), or data.sources, or a synthetic: section")
    require(bool(exp.base.data.eval) or exp.synthetic is not None, "data.eval",
            f"required: the scaling metric {s.metric!r} is measured on the eval set")
    for method in s.methods:
        method_config(exp, method)


def method_config(exp: ScalingExperiment, method: str) -> PretrainConfig:
    """The base config with one method's overrides applied, through load_config (keys checked)."""
    overrides = flatten(exp.section.methods[method] or {})
    for key in overrides:
        require(not any(key == r or key.startswith(r + ".") for r in RESERVED_KEYS), f"scaling.methods.{method}.{key}",
               f"set by the scaling experiment for every point; methods may not override {list(RESERVED_KEYS)}")
    return load_config(PretrainConfig, exp.base, overrides, where=f"scaling.methods.{method}.")


# ---------------------------------------------------------------------------------------------- points

def select_shards(files: Sequence[str], fraction: float, seed: int) -> list[str]:
    """round(fraction * n) shards (at least 1) from one seeded permutation of the sorted files: the same
    seed gives the same subset, and a smaller fraction's subset lies inside a larger one's."""
    if not files:
        raise ValueError("select_shards needs at least one shard file")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction}; expected in (0, 1]")
    order = sorted(files)
    random.Random(seed).shuffle(order)
    k = max(1, min(len(order), math.floor(fraction * len(order) + 0.5)))
    return sorted(order[:k])


def shard_pattern(files: Sequence[str]) -> str:
    """A `data.train` value naming exactly these shard files: `dir/{a.tar,b.tar}` (one listing per
    directory in list_shards), or the one file itself."""
    files = sorted(files)
    bad = [f for f in files if any(c in f for c in ",{}")]
    if bad:
        raise ValueError(f"shard paths with ',', '{{' or '}}' cannot be named in a brace list: {bad[:3]}")
    if len(files) == 1:
        return files[0]
    parents = {f.rsplit("/", 1)[0] for f in files}
    if len(parents) == 1 and "/" in files[0]:
        parent = parents.pop()
        return f"{parent}/{{{','.join(f.rsplit('/', 1)[1] for f in files)}}}"
    return "{" + ",".join(files) + "}"


def _budget_steps(section: ScalingSection, base_steps: int, batch_size: int, samples: Optional[int], where: str) -> int:
    if section.epochs is None:
        return base_steps
    if samples is None:
        raise ConfigError(f"config key 'scaling.epochs': needs sample counts, but the shards of {where} have no "
                          "img2dataset _stats.json files; use scaling.steps: fixed")
    return max(1, math.ceil(section.epochs * samples / batch_size))


def plan_points(exp: ScalingExperiment) -> list[Point]:
    """Every (fraction, method) point with its derived PretrainConfig, smallest data size first (so an
    experiment cut short still has complete method pairs at the sizes it reached). Lists the shards
    but starts nothing."""
    sources = exp.base.data.train_sources()
    listed = [resolve_shards(src.path, src.format)[0] for src in sources]
    subsets: dict[float, list[list[str]]] = {}
    for fraction in sorted(exp.section.fractions):
        subsets[fraction] = [select_shards(files, fraction, exp.section.seed) for files in listed]
    seen: dict[tuple, float] = {}
    for fraction, chosen in subsets.items():
        key = tuple(len(c) for c in chosen)
        if key in seen:
            raise ConfigError(f"config key 'scaling.fractions': {seen[key]:g} and {fraction:g} select the same "
                              f"shards ({'+'.join(map(str, key))} of {'+'.join(str(len(f)) for f in listed)}); "
                              "whole shards are the unit, so use fewer or coarser fractions")
        seen[key] = fraction
    points = []
    for fraction, chosen in subsets.items():
        counts = [read_stats(c) for c in chosen]
        samples = None if None in counts else sum(counts)
        for method in exp.section.methods:
            cfg = method_config(exp, method)
            cfg.name = point_name(method, fraction)
            cfg.output_dir = str(exp.out_dir)
            if cfg.ray.storage_path:  # checkpoints of two experiments must not share point names
                cfg.ray.storage_path = f"{cfg.ray.storage_path.rstrip('/')}/{exp.name}"
            # All of a source's shards: keep its own spelling (a directory reads better than 50 names).
            paths = [src.path if len(files) == len(all_files) else shard_pattern(files)
                     for src, files, all_files in zip(sources, chosen, listed)]
            if cfg.data.sources:
                for src, path in zip(cfg.data.sources, paths):
                    src.path = path
            else:
                cfg.data.train = paths[0]
            cfg.train.steps = _budget_steps(exp.section, cfg.train.steps, cfg.train.batch_size, samples,
                                            f"fraction {fraction:g}")
            validate(cfg)
            points.append(Point(method, fraction, sum(map(len, chosen)), samples, cfg))
    return points


def finished_summary(point: Point) -> Optional[dict]:
    """The point's summary.json when it already ran with this same config; a run left by a different
    config is an error (silently mixing two recipes in one table would be worse)."""
    import json

    run_dir = point.cfg.run_dir
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = flatten({k: v for k, v in OmegaConf.to_container(OmegaConf.load(saved_path)).items() if k != "ray"})
        wanted = flatten({k: v for k, v in to_dict(point.cfg).items() if k != "ray"})
        # Keys only one side has come from a raylpclip version that added or dropped a config field.
        differ = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
        if differ:
            raise ConfigError(f"scaling point {point.name}: {run_dir} finished with a different config "
                              f"({', '.join(differ[:5])}); delete that directory or choose another name")
    return json.loads(summary_path.read_text())
