"""The one way a run config is made: dataclass defaults <- a YAML file or a mapping <- overrides.

The command line (`CONFIG.yaml key=value ...`), recipes, a Tune trial's sampled values and a scaling
point's method overrides all go through `load_config`: the same merge, the same error messages, the
same checks. Overrides are `key=value` strings (parsed as the command line parses them) or a mapping
of dotted keys to values (what Tune and the experiment planners hold). Dotted keys nest, also inside
free-form dict fields (`model.overrides.vision.image_size=32` gives {"vision": {"image_size": 32}}),
which their readers flatten (models/clip.py).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raylpclip.config.checks import ConfigError, validate

T = TypeVar("T")
Source = str | Path | Mapping[str, Any] | None
Overrides = Sequence[str] | Mapping[str, Any]


def load_config(cls: Type[T], source: Source | Sequence[Source] = None, overrides: Overrides = (), *,
                where: str = "") -> T:
    """A validated `cls` from its defaults, `source` (a YAML path, a mapping or a `cls` instance; a list
    of them is merged in order, e.g. [base.yaml, the experiment's own keys]) and `overrides`. Unknown
    keys, wrong types and impossible values raise ConfigError naming the key; `where` says whose keys
    they are when `cls` is one part of a larger file (e.g. "scaling.methods.psd.")."""
    layers = list(source) if isinstance(source, (list, tuple)) else [] if source is None else [source]
    try:
        merged = OmegaConf.structured(cls)
        for layer in layers:
            merged = _merge(merged, layer, cls)
        merged = apply_overrides(merged, overrides)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe(exc, cls).replace("config key '", f"config key '{where}", 1)) from None
    try:
        validate(cfg)
    except ConfigError as exc:
        if where:
            raise ConfigError(f"{where.rstrip('.')}: {exc}") from None
        raise
    return cfg


def _merge(merged: DictConfig, layer: Source, cls: Type) -> DictConfig:
    if isinstance(layer, (str, Path)):
        try:
            return OmegaConf.merge(merged, read_yaml(layer))
        except OmegaConfBaseException as exc:  # name the file: with several layers it may not be the user's own
            raise ConfigError(f"{describe(exc, cls)} (in {layer})") from None
    if dataclasses.is_dataclass(layer) or OmegaConf.is_config(layer):
        return OmegaConf.merge(merged, OmegaConf.structured(layer) if dataclasses.is_dataclass(layer) else layer)
    return OmegaConf.merge(merged, OmegaConf.create(dict(layer)))


def read_yaml(path: str | Path, what: str = "") -> DictConfig:
    """A YAML file's mapping, or ConfigError naming the file (missing, not YAML, not a mapping)."""
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}" + (f" ({what})" if what else ""))
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # a YAML syntax error: one line naming the file
        raise ConfigError(f"config file {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got a {type(loaded).__name__}")
    return loaded


def apply_overrides(conf: DictConfig, overrides: Overrides) -> DictConfig:
    """`conf` with each override merged in order (OmegaConf's checks apply to a structured `conf`)."""
    items = overrides.items() if isinstance(overrides, Mapping) else (_parse(o) for o in overrides)
    for key, value in items:
        conf = OmegaConf.merge(conf, _nested(key, value))
    return conf


def _parse(item: str) -> tuple[str, Any]:
    """`key=value` as the command line reads it (the value is YAML: numbers, lists, mappings, null)."""
    key = item.split("=", 1)[0]
    parsed = OmegaConf.from_dotlist([item])
    value = OmegaConf.select(parsed, key, default=None)
    return key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _nested(key: str, value: Any) -> DictConfig:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return OmegaConf.create(tree)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"psd": {"a_max": 0}} and {"psd.a_max": 0} both -> {"psd.a_max": 0}: a mapping as dotted keys (an
    empty mapping below the top stays a value: setting a dict field to {} is a setting too)."""
    if not isinstance(tree, Mapping) or not tree:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """A config command's arguments: the optional YAML path (first, without '='), then `key=value`s."""
    args = list(args)
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def describe(exc: OmegaConfBaseException, cls: Type = object) -> str:
    """OmegaConf's first line, plus what the key allows: the section's keys for an unknown key, the
    field's type for a value of the wrong type."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    reason = str(exc).splitlines()[0].rstrip(".")
    whole = re.search(r"(\w+) is not a subclass of (\w+)", reason)
    if not key and whole and dataclasses.is_dataclass(cls):  # `train=3`: a whole section replaced
        hints = typing.get_type_hints(cls)
        key = next((f.name for f in dataclasses.fields(cls) if getattr(hints[f.name], "__name__", "") == whole.group(2)), None)
        if key:
            return f"config key '{key}': got a {whole.group(1)}; expected {_type_words(hints[key])}"
    if not key:
        return f"config: {reason}"
    # The dataclass the failing key belongs to (inside a list, e.g. data.sources, full_key is only the
    # last part, so say which kind of entry it is).
    section = getattr(exc, "object_type", None)
    name = str(key).rsplit(".", 1)[-1]
    if not dataclasses.is_dataclass(section):
        return f"config key '{key}': {reason}"
    where = str(key).rsplit(".", 1)[0] if "." in str(key) else ("top level" if section is cls else f"a {section.__name__} entry")
    fields = {f.name for f in dataclasses.fields(section)}
    if name not in fields:
        allowed = ", ".join(f.name for f in dataclasses.fields(section))
        return f"config key '{key}': {reason}, an unknown key; allowed keys ({where}): {allowed}"
    expected = _type_words(typing.get_type_hints(section)[name])
    return f"config key '{key}'{'' if '.' in str(key) or section is cls else f' ({where})'}: {reason}; expected {expected}"


def _type_words(annotation: Any) -> str:
    """A field's type in words (`Optional[float]` -> "a number or null")."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation in words:
        return words[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        return " or ".join(_type_words(a) for a in args if a is not type(None)) + " or null"
    if origin in (list, tuple):
        return "a list, e.g. [a, b]"
    if origin is dict:
        return "a mapping, e.g. {key: value}"
    if dataclasses.is_dataclass(annotation):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(annotation))
    return getattr(annotation, "__name__", str(annotation))


def to_dict(cfg: Any) -> dict:
    """A plain dict (what is saved beside a run, and compared when a run is resumed)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_dict(cls: Type[T], data: dict) -> T:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), str(path))
