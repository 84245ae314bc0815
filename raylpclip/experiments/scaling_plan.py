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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raylpclip.config import ConfigError, PretrainConfig, to_dict, validate
from raylpclip.data.shards import read_stats, resolve_shards
from raylpclip.experiments import scaling_report as report
from raylpclip.summary import write_summary

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
    base: DictConfig  # the structured PretrainConfig every point starts from
    section: ScalingSection
    synthetic: Any = None  # raylpclip.commands.demo.SyntheticDataConfig, or None for shards on disk

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

def _wrap(exc: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    key = getattr(exc, "full_key", None)
    reason = str(exc).splitlines()[0]
    return ConfigError(f"config key '{prefix}{key}': {reason}" if key else f"config{' ' + prefix if prefix else ''}: {reason}")


def _load_yaml(path: str | Path, what: str) -> DictConfig:
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}" + (f" ({what})" if what else ""))
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # a YAML syntax error: one line naming the file
        raise ConfigError(f"config file {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got a {type(loaded).__name__}")
    return loaded


def _base_path(base: str, config_path: str | None) -> Path:
    """`base:` as given (relative to the working directory, like every path on the command line), else
    relative to the scaling YAML's own folder."""
    candidates = [Path(base)]
    if config_path and not Path(base).is_absolute():
        candidates.append(Path(config_path).parent / base)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config key 'base': file {base!r} not found (tried {', '.join(map(str, candidates))})")


def load_scaling(path: str | None, overrides: Sequence[str] = ()) -> ScalingExperiment:
    """Merge `base:` <- the YAML's own pretraining keys <- command-line `key=value` into a PretrainConfig
    (kept as a structured DictConfig so each method's overrides apply on top), plus the scaling and
    synthetic sections. Fails with ConfigError naming the key."""
    from raylpclip.commands.demo import SyntheticDataConfig

    try:
        raw = _load_yaml(path, "") if path else OmegaConf.create({})
        if not OmegaConf.select(raw, "scaling.methods", default=None):
            # Defaults go in before the command line, so `scaling.methods.psd.psd.a_max=0.3` tweaks the
            # default psd method instead of replacing both methods with that one.
            OmegaConf.update(raw, "scaling.methods", DEFAULT_METHODS, merge=True, force_add=True)
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise _wrap(exc) from None
    raw = OmegaConf.to_container(raw)  # plain dict: pop the sections
    base_file = raw.pop("base", None)
    section_raw = raw.pop("scaling", None) or {}
    synthetic_raw = raw.pop("synthetic", None)
    base = OmegaConf.structured(PretrainConfig)
    if base_file:
        base_path = _base_path(str(base_file), path)
        try:
            base = OmegaConf.merge(base, _load_yaml(base_path, "config key 'base'"))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{_wrap(exc)} (in base file {base_path})") from None
    try:
        base = OmegaConf.merge(base, raw)
    except OmegaConfBaseException as exc:
        raise _wrap(exc) from None
    try:
        section = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ScalingSection), section_raw))
    except OmegaConfBaseException as exc:
        raise _wrap(exc, "scaling.") from None
    synthetic = None
    if synthetic_raw is not None:
        try:
            synthetic = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SyntheticDataConfig), synthetic_raw))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, "synthetic.") from None
    if not section.methods:
        section.methods = {k: dict(v) for k, v in DEFAULT_METHODS.items()}
    exp = ScalingExperiment(base=base, section=section, synthetic=synthetic)
    check_experiment(exp)
    return exp


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"psd": {"a_max": 0}} and {"psd.a_max": 0} both -> {"psd.a_max": 0} (the command line's
    `scaling.methods.clip.psd.a_max=0` arrives nested, a YAML `{psd.a_max: 0}` dotted)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def check_experiment(exp: ScalingExperiment) -> None:
    """Everything that can be checked without listing shards: the scaling section, and every method's
    pretraining config (so a typo in the last method fails before the first point trains)."""
    s = exp.section
    _require(len(s.fractions) > 0, "scaling.fractions", "expected a non-empty list of fractions in (0, 1]")
    for f in s.fractions:
        _require(0.0 < f <= 1.0, "scaling.fractions", f"got {f}, expected every fraction in (0, 1]")
    _require(len(set(s.fractions)) == len(s.fractions), "scaling.fractions", f"got {s.fractions}, expected distinct values")
    _require(s.metric in report.METRICS, "scaling.metric", f"got {s.metric!r}, expected one of {list(report.METRICS)}")
    _require(s.steps in (None, "fixed"), "scaling.steps", f"got {s.steps!r}, expected 'fixed' (or use scaling.epochs: N)")
    _require(s.steps is None or s.epochs is None, "scaling.epochs",
             "give either scaling.steps: fixed or scaling.epochs: N, not both")
    _require(s.epochs is None or s.epochs > 0, "scaling.epochs", f"got {s.epochs}, expected > 0")
    for role in ("baseline", "treatment"):
        _require(getattr(s, role) in s.methods, f"scaling.{role}",
                 f"got {getattr(s, role)!r}, expected one of the methods {list(s.methods)}")
    _require(s.baseline != s.treatment, "scaling.treatment", "expected a method other than scaling.baseline")
    for method, overrides in s.methods.items():
        _require(bool(method) and "/" not in method and method not in (".", ".."), "scaling.methods",
                 f"method name {method!r} is not a plain directory name")
        _require(overrides is None or isinstance(overrides, dict), f"scaling.methods.{method}",
                 f"expected a mapping of config keys to values, got {overrides!r}")
    if exp.synthetic is None:
        base = OmegaConf.to_object(exp.base)
        _require(bool(base.data.train_sources()), "data.train",
                 "required (a shard directory, glob, brace range or s3:// URL), or data.sources, or a synthetic: section")
    _require(bool(exp.base.data.eval) or exp.synthetic is not None, "data.eval",
             f"required: the scaling metric {s.metric!r} is measured on the eval set")
    for method in s.methods:
        method_config(exp, method)


def method_config(exp: ScalingExperiment, method: str) -> DictConfig:
    """The base config with one method's overrides applied (still structured, keys checked)."""
    conf = exp.base.copy()
    for key, value in _flatten(exp.section.methods[method] or {}).items():
        where = f"scaling.methods.{method}.{key}"
        _require(not any(key == r or key.startswith(r + ".") for r in RESERVED_KEYS), where,
                 f"set by the scaling experiment for every point; methods may not override {list(RESERVED_KEYS)}")
        try:
            _assign(conf, key, value)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"config key '{where}': {str(exc).splitlines()[0]}") from None
    try:
        validate(OmegaConf.to_object(conf))
    except ConfigError as exc:
        raise ConfigError(f"scaling.methods.{method}: {exc}") from None
    except OmegaConfBaseException as exc:
        raise _wrap(exc, f"scaling.methods.{method}.") from None
    return conf


def _assign(conf: DictConfig, key: str, value: Any) -> None:
    """OmegaConf.update, except inside a free-form dict field (model.overrides) where the rest of the
    dotted key is one literal key, as that field is written: {"vision.image_size": 32}."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        node = OmegaConf.select(conf, ".".join(parts[:i]), default=None)
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
            node[".".join(parts[i:])] = value
            return
    OmegaConf.update(conf, key, value, merge=True)


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
    base = OmegaConf.to_object(exp.base)
    sources = base.data.train_sources()
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
            conf = method_config(exp, method)
            cfg: PretrainConfig = OmegaConf.to_object(conf)
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
        saved = _flatten({k: v for k, v in OmegaConf.to_container(OmegaConf.load(saved_path)).items() if k != "ray"})
        wanted = _flatten({k: v for k, v in to_dict(point.cfg).items() if k != "ray"})
        # Keys only one side has come from a raylpclip version that added or dropped a config field.
        differ = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
        if differ:
            raise ConfigError(f"scaling point {point.name}: {run_dir} finished with a different config "
                              f"({', '.join(differ[:5])}); delete that directory or choose another name")
    return json.loads(summary_path.read_text())


# ---------------------------------------------------------------------------------------------- running

def _prepare_synthetic(exp: ScalingExperiment) -> None:
    """Generate the demo's procedural shards once into `<experiment>/data` and point the base config at them."""
    from raylpclip.data.synthetic import SyntheticSpec, class_names
    from raylpclip.commands.demo import write_synthetic

    syn = exp.synthetic
    train_dir, eval_dir = write_synthetic(syn, exp.out_dir / "data")
    spec = SyntheticSpec(image_size=syn.image_size, label_by=syn.label_by)
    exp.base.data.train, exp.base.data.eval = str(train_dir), str(eval_dir)
    exp.base.data.format = "webdataset"
    exp.base.data.image_size = syn.image_size
    if not exp.base.eval.classnames:
        exp.base.eval.classnames = class_names(spec)


def _log(message: str) -> None:
    print(f"[raylpclip] scaling {message}", flush=True)


def run_scaling(exp: ScalingExperiment) -> dict:
    """Run (or resume) every point, rewriting results.csv, scaling.png and summary.json after each one,
    so a long experiment can be watched and a cut-short one still leaves its table."""
    from raylpclip.runtime.train.pretrain_driver import run_pretrain  # Ray is imported only when points run

    start = time.perf_counter()
    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if exp.synthetic is not None:
        _prepare_synthetic(exp)
    points = plan_points(exp)
    OmegaConf.save(OmegaConf.create({"base": OmegaConf.to_container(exp.base),
                                     "scaling": OmegaConf.to_container(OmegaConf.structured(exp.section))}),
                   out / "config.yaml")
    sizes = ", ".join(f"{f:g}: {next(p.shards for p in points if p.fraction == f)} shards / "
                      f"{next(p.train_samples for p in points if p.fraction == f)} samples"
                      for f in sorted(exp.section.fractions))
    budget = (f"{exp.section.epochs:g} epochs per size" if exp.section.epochs is not None
              else f"{points[0].cfg.train.steps} steps per point (compute-matched)")
    _log(f"{exp.name}: {len(points)} points ({len(exp.section.methods)} methods x {len(exp.section.fractions)} "
         f"sizes; {sizes}), {budget}, metric {exp.section.metric}; output {out}")
    rows, ran, skipped = [], 0, 0
    for i, point in enumerate(points, 1):
        tag = f"point {i}/{len(points)} {point.name}"
        summary = finished_summary(point)
        if summary is not None:
            skipped += 1
            _log(f"{tag}: finished before ({point.cfg.run_dir / 'summary.json'}), "
                 f"{exp.section.metric} {_fmt(summary.get(exp.section.metric))}; skipped")
        else:
            _log(f"{tag}: {point.shards} shards, {point.train_samples} samples, "
                 f"{point.cfg.train.steps} steps of {point.cfg.train.batch_size}")
            summary = run_pretrain(point.cfg)
            ran += 1
            _log(f"{tag}: {exp.section.metric} {_fmt(summary.get(exp.section.metric))} in {summary['wall_s']:.0f}s")
        rows.append(report.result_row(point, summary))
        result = _write_outputs(exp, rows, points_run=ran, points_skipped=skipped, wall_s=time.perf_counter() - start)
    return result


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _write_outputs(exp: ScalingExperiment, rows: list[dict], *, points_run: int, points_skipped: int,
                   wall_s: float) -> dict:
    s = exp.section
    out = exp.out_dir
    csv_path = report.write_csv(rows, out / "results.csv")
    gains = report.gains(rows, metric=s.metric, baseline=s.baseline, treatment=s.treatment)
    plot_path = report.plot_scaling(rows, gains, out / "scaling.png", metric=s.metric, baseline=s.baseline,
                                    treatment=s.treatment, title=exp.name)
    summary = {
        "name": exp.name, "out_dir": str(out.resolve()), "metric": s.metric, "baseline": s.baseline,
        "treatment": s.treatment, "fractions": sorted(s.fractions), "methods": list(s.methods),
        "budget": {"epochs": s.epochs} if s.epochs is not None else {"steps": "fixed"},
        "points": rows, "gains": gains, "gain_grows_with_data": report.grows(gains),
        "complete": len(rows) == len(s.fractions) * len(s.methods),
        "points_run": points_run, "points_skipped": points_skipped, "wall_s": wall_s,
        "results_csv": str(csv_path.resolve()), "plot": str(plot_path.resolve()),
    }
    write_summary(out, summary)
    return summary
