"""Training state on disk: one directory per checkpoint, committed by a manifest, loaded without pickle.

`state.pt` holds only tensors and plain Python values, so it loads with `weights_only=True`: a
checkpoint someone hands you cannot execute code.

Every file of a checkpoint is written under a temp name and renamed, and `manifest.json`, written
last, records each file's size and sha256. A crash mid-write, an interrupted upload to shared storage
or a file truncated or replaced later leaves a directory whose files disagree with its manifest, and
`check_checkpoint` names what is wrong instead of letting it be picked as the latest. (Directories
from before manifests existed are accepted when their state.pt loads.)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
RANK_MANIFEST = "manifest.rank{}.json"  # a sharded checkpoint: rank r's own files (r >= 1)
_CHUNK = 1 << 22


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint that cannot be used; the message names the directory or file and why."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """A checkpoint directory without its state file."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def save_state(ckpt_dir: str | Path, *, state: dict[str, Any], meta: dict[str, Any],
               extra: dict[str, bytes] | None = None, written: list[str] = (), ranks: int = 1) -> Path:
    """Write `state` (state_dicts, counters, RNG tensors), a JSON `meta` and `extra` files (name ->
    bytes, e.g. the data stream position) into `ckpt_dir`, then the manifest that commits them.

    A sharded checkpoint (parallel/sharded_checkpoint.py): `written` names the files already there (rank 0's
    shards and index), `ranks` the ranks whose manifests (`save_rank_manifest`) must be beside this one."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Temp name + rename: a crash mid-write never leaves a truncated state.pt under its final name.
    tmp = ckpt_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / STATE_FILE)
    _atomic_write(ckpt_dir / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    for name, data in (extra or {}).items():
        if "/" in name or name in (STATE_FILE, META_FILE, MANIFEST_FILE) or name.startswith("."):
            raise ValueError(f"extra checkpoint file name {name!r}: expected a plain new file name")
        _atomic_write(ckpt_dir / name, data)
    _write_manifest(ckpt_dir / MANIFEST_FILE, ckpt_dir, [STATE_FILE, META_FILE, *(extra or {}), *written],
                    **({"ranks": ranks} if ranks > 1 else {}))
    return ckpt_dir


def save_rank_manifest(ckpt_dir: str | Path, rank: int, written: list[str]) -> None:
    """Rank `rank`'s part of a sharded checkpoint: the manifest of the shard files it wrote into `ckpt_dir`."""
    _write_manifest(Path(ckpt_dir) / RANK_MANIFEST.format(rank), Path(ckpt_dir), written)


def _write_manifest(path: Path, ckpt_dir: Path, names: list[str], **fields) -> None:
    files = {name: {"bytes": (ckpt_dir / name).stat().st_size, "sha256": file_digest(ckpt_dir / name)}
             for name in names}
    _atomic_write(path, json.dumps({"files": files, **fields}, indent=2, sort_keys=True).encode())


def manifest_files(read_json: Callable[[str], Any]) -> dict | str:
    """Every file a checkpoint's manifests list (name -> {bytes, sha256}), or why they cannot be read.
    `read_json(name)`: a file of the checkpoint directory as JSON, None when missing or unreadable. A sharded
    checkpoint's manifest names how many ranks wrote it; each rank's manifest must be there too (a rank's
    upload that never finished leaves it out)."""
    manifest = read_json(MANIFEST_FILE)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"unreadable {MANIFEST_FILE}"
    files = dict(manifest["files"])
    for rank in range(1, int(manifest.get("ranks", 1))):
        part = read_json(RANK_MANIFEST.format(rank))
        if not isinstance(part, dict) or not isinstance(part.get("files"), dict):
            return f"{RANK_MANIFEST.format(rank)} (rank {rank}'s shards) is missing or unreadable"
        files.update(part["files"])
    return files


def check_checkpoint(ckpt_dir: str | Path, *, digests: bool = True) -> str | None:
    """Why `ckpt_dir` cannot be used as a checkpoint, or None when it is complete.

    With a manifest every listed file must have its recorded size (and, with `digests`, sha256).
    Without one (a checkpoint written before manifests existed) `state.pt` must at least be there;
    loading it is the remaining test.
    """
    ckpt_dir = Path(ckpt_dir)
    manifest_path = ckpt_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        # A truncated state.pt still fails in torch.load: its zip directory sits at the end.
        return None if (ckpt_dir / STATE_FILE).is_file() else f"no {STATE_FILE}"
    files = manifest_files(lambda name: _json_or_none(ckpt_dir / name))
    if isinstance(files, str):
        return files
    for name, rec in sorted(files.items()):
        path = ckpt_dir / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != rec.get("bytes"):
            return f"{name} has {size} bytes, the manifest says {rec.get('bytes')} (truncated or replaced)"
        if digests and file_digest(path) != rec.get("sha256"):
            return f"{name} does not match its sha256 in the manifest (corrupted or replaced)"
    return None


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The state saved by `save_state`, checked against the manifest, loaded with weights_only=True. A sharded
    checkpoint's comes whole, into this one process: its tensors from the shards, the optimizer's state keyed
    by parameter name (parallel/sharded_checkpoint.py)."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointMissing(f"checkpoint {ckpt_dir} has no {STATE_FILE}")
    problem = check_checkpoint(ckpt_dir)
    if problem:
        raise CheckpointError(f"checkpoint {ckpt_dir} cannot be used: {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated, foreign or pickled files
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): "
                              f"{_first_reason(exc)}") from None
    if state.get("sharded"):
        from raylpclip.parallel.sharded_checkpoint import load_whole  # torch.distributed: only when sharded

        whole = load_whole(ckpt_dir)
        state["task"] = whole["task"]
        state["optimizer"] = {"state": whole["optimizer"], "param_groups": state.pop("optimizer_param_groups")}
    return state


def verify_state(ckpt_dir: str | Path) -> None:
    """Raise CheckpointError unless `ckpt_dir` passes its manifest and its state.pt unpickles with
    weights_only=True. Memory-maps the tensors instead of reading them: cheap enough for a driver to
    check a run's checkpoints before it starts anything."""
    path = Path(ckpt_dir) / STATE_FILE
    problem = check_checkpoint(ckpt_dir) if path.is_file() else f"no {STATE_FILE}"
    if problem:
        raise CheckpointError(f"checkpoint {ckpt_dir} cannot be used: {problem}")
    try:
        # mmap only works for torch's zip format; anything else (e.g. a bare pickle) is read whole.
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - every failure means: not loadable
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): "
                              f"{_first_reason(exc)}") from None


def _first_reason(exc: BaseException) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(exc).__name__


def load_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / META_FILE).read_text())
