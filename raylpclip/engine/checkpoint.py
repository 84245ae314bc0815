"""Training state on disk: one directory per checkpoint, written atomically, loaded without pickle.

`state.pt` holds only tensors and plain Python values, so it loads with `weights_only=True`: a
checkpoint someone hands you cannot execute code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save_state(ckpt_dir: str | Path, *, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `state` (state_dicts, counters, RNG tensors) and a JSON `meta` into `ckpt_dir`."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Write to a temp name and rename: a crash mid-write never leaves a truncated state.pt behind.
    tmp = ckpt_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / STATE_FILE)
    (ckpt_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return ckpt_dir


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_dir} has no {STATE_FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise RuntimeError(f"checkpoint {path} cannot be loaded: {exc}") from exc


def load_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / META_FILE).read_text())
