"""A sweep's search-space expressions: what `sweep.space` maps a config key to.

    optim.lr: loguniform(1e-5, 1e-3)     uniform(a, b), randint(a, b) (b excluded), choice(x, y, ...)
    psd.a_max: [0.2, 0.5]                a list is a choice
    train.steps: 200                     a plain value is a fixed override for every trial
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from raylpclip.config import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
_EXPR = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass
@dataclass
class Dim:
    """One swept key: `kind` is one of DISTRIBUTIONS; `args` its bounds or its choices."""

    key: str
    kind: str
    args: list

    def corners(self) -> list:
        """The values every trial's value lies between (bounds) or among (choices): checked up front."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)



def parse_value(key: str, value: Any) -> Dim | None:
    """A `space` entry as a Dim, or None for a plain (fixed) value. Errors name the key."""
    where = f"config key 'sweep.space.{key}'"
    if isinstance(value, (list, tuple)):
        return Dim(key, "choice", _choices(where, list(value)))
    if not isinstance(value, str):
        return None
    found = _EXPR.match(value)
    if not found:
        if "(" in value or ")" in value:
            raise ConfigError(f"{where}: cannot parse {value!r}; expected one of "
                              f"{', '.join(d + '(...)' for d in DISTRIBUTIONS)}, a list, or a plain value")
        return None
    kind, tokens = found.group(1), _split_args(found.group(2))
    if any(not t.strip() for t in tokens):
        raise ConfigError(f"{where}: empty argument in {value!r}")
    args = [_scalar(t) for t in tokens]
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} in {value!r}; expected one of {list(DISTRIBUTIONS)}")
    if kind == "choice":
        return Dim(key, kind, _choices(where, args))
    if len(args) != 2 or not all(_is_number(a) for a in args):
        raise ConfigError(f"{where}: {kind} takes two numbers (low, high), got {value!r}")
    low, high = args
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes two integers (low, high excluded), got {value!r}")
    if not low < high:
        raise ConfigError(f"{where}: expected low < high, got {value!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low < high, got {value!r}")
    return Dim(key, kind, [low, high])


def _split_args(text: str) -> list[str]:
    """Comma-separated arguments; commas inside quotes belong to the string."""
    tokens, current, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            tokens.append(current)
            current = ""
            continue
        current += ch
    tokens.append(current)
    return [] if tokens == [""] or not text.strip() else tokens


def _scalar(token: str) -> Any:
    """An argument as the command line would read it: number, bool, null or (quoted or bare) string."""
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    return token


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choices(where: str, values: list) -> list:
    if not values:
        raise ConfigError(f"{where}: a choice needs at least one value")
    bad = [v for v in values if not (v is None or isinstance(v, (bool, int, float, str)))]
    if bad:
        raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null (got {bad!r}); "
                          "sweep a list-valued key through a fixed base value instead")
    return values


