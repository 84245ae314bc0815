"""A multi-run experiment's YAML (`raylpclip sweep`, `raylpclip scaling`): a pretraining config plus the
experiment's own keys, read the same way for every kind of experiment.

    base: recipe.yaml       optional: a pretrain YAML, or a demo YAML (its `pretrain:` defaults and its
                            `synthetic:` data); a relative path is tried as given, then beside this file
    <section>: ...          the experiment's own settings (`sweep:` or `scaling:`)
    synthetic: ...          optional: generate the demo's data into the experiment directory
    train: {steps: 300}     any pretraining key, on top of the base

Command-line overrides go where their first key points: `base=`, `<section>.*` and `synthetic.*` to the
experiment's own keys, every other key to the pretraining config. Both parts are typed through
`load_config`, so an error names its key as the file spells it (`sweep.metricz`, `psd.a_maxx`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, Type, TypeVar

from omegaconf import OmegaConf

from raylpclip.config import ConfigError, PretrainConfig, apply_overrides, load_config, read_yaml, to_dict

F = TypeVar("F")


def read_experiment(path: str | None, overrides: Sequence[str], file_cls: Type[F], *,
                    defaults: Mapping[str, Any] | None = None) -> tuple[F, PretrainConfig]:
    """(the experiment's own keys as a `file_cls` with fields base/<section>/synthetic, the pretraining
    config). `defaults`: dotted own keys that take this value when the file does not set them, before the
    command line applies (so `scaling.methods.psd.psd.a_max=0.3` tweaks a default method)."""
    raw = OmegaConf.to_container(read_yaml(path)) if path else {}
    own_keys = {f.name for f in dataclasses.fields(file_cls)}
    mine = [o for o in overrides if _head(o) in own_keys]
    rest = [o for o in overrides if _head(o) not in own_keys]
    own = OmegaConf.create({k: raw.pop(k) for k in list(raw) if k in own_keys})
    for key, value in (defaults or {}).items():
        if OmegaConf.select(own, key, default=None) is None:
            OmegaConf.update(own, key, value, force_add=True)
    own = OmegaConf.to_container(apply_overrides(own, mine))
    base_layers, base_synthetic = _base(own.get("base") or "", path)
    if base_synthetic is not None:  # the file's own synthetic keys refine the demo base's
        own["synthetic"] = {**base_synthetic, **(own.get("synthetic") or {})}
    settings = load_config(file_cls, own)
    return settings, load_config(PretrainConfig, [*base_layers, raw], rest)


def _head(override: str) -> str:
    return override.split("=", 1)[0].split(".", 1)[0]


def base_path(base: str, config_path: str | None) -> Path:
    """`base:` as given (relative to the working directory, like every path on the command line), else
    relative to the experiment YAML's own folder."""
    candidates = [Path(base)]
    if config_path and not Path(base).is_absolute():
        candidates.append(Path(config_path).parent / base)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config key 'base': file {base!r} not found (tried {', '.join(map(str, candidates))})")


def _base(base: str, config_path: str | None) -> tuple[list, dict | None]:
    """The pretraining layers a `base:` brings (its file, or a demo's resolved pretrain config) and, for a
    demo YAML (`pretrain:`/`synthetic:` sections), its synthetic data settings."""
    if not base:
        return [], None
    found = base_path(base, config_path)
    if set(read_yaml(found).keys()) & {"pretrain", "synthetic"}:
        from raylpclip.commands.demo import DemoConfig

        demo = load_config(DemoConfig, str(found))
        return [to_dict(demo.pretrain)], to_dict(demo.synthetic)
    return [str(found)], None
