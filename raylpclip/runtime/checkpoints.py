"""Choosing the checkpoint a run resumes from, on local disk or object storage (pyarrow filesystems).

Ray Train hands a restarted worker group the latest checkpoint it registered. That directory may
still be unusable: truncated on disk, partly uploaded, overwritten with something else. The worker
then falls back to the newest older checkpoint of the same run that passes `check_checkpoint` and
says so in one line; when none is usable the run stops with one line naming each checkpoint and
what is wrong with it. The driver runs the same listing before Ray starts (sizes only, no download),
so a run whose checkpoints are all broken fails in seconds.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Callable

import pyarrow.fs as pafs

from raylpclip.engine.checkpoint import MANIFEST_FILE, META_FILE, STATE_FILE, CheckpointError

CHECKPOINT_PREFIX = "checkpoint_"


@dataclass
class Found:
    path: str  # filesystem path of the checkpoint directory
    step: int | None  # from meta.json; None when unreadable
    problem: str | None  # why it cannot be used (size check only), None when it looks complete


def _read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _sizes(fs: pafs.FileSystem, directory: str) -> dict[str, int]:
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return {posixpath.basename(i.path): i.size for i in infos if i.type == pafs.FileType.File}


def inspect(fs: pafs.FileSystem, directory: str) -> Found:
    """A checkpoint directory's step and, from file sizes against its manifest, whether it is whole."""
    sizes = _sizes(fs, directory)
    meta = _read_json(fs, posixpath.join(directory, META_FILE)) if META_FILE in sizes else None
    step = meta.get("step") if isinstance(meta, dict) else None
    if STATE_FILE not in sizes:
        return Found(directory, step, f"no {STATE_FILE}")
    if MANIFEST_FILE not in sizes:
        return Found(directory, step, None)  # written before manifests: loading is the test
    manifest = _read_json(fs, posixpath.join(directory, MANIFEST_FILE))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return Found(directory, step, f"unreadable {MANIFEST_FILE}")
    for name, rec in sorted(manifest["files"].items()):
        if name not in sizes:
            return Found(directory, step, f"{name} is missing")
        if sizes[name] != rec.get("bytes"):
            return Found(directory, step, f"{name} has {sizes[name]} bytes, the manifest says {rec.get('bytes')}")
    return Found(directory, step, None)


def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> list[Found]:
    """The run's checkpoint directories, newest step first (unreadable steps last)."""
    infos = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    found = [inspect(fs, i.path) for i in infos
             if i.type == pafs.FileType.Directory and posixpath.basename(i.path).startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda f: (f.step is not None, f.step or 0, f.path), reverse=True)


def candidates(fs: pafs.FileSystem, latest_path: str) -> list[Found]:
    """Ray's latest checkpoint first, then the run's older ones, newest first. Checkpoints newer than
    Ray's latest were never registered (an upload cut short) and are left alone."""
    run_path = posixpath.dirname(latest_path.rstrip("/"))
    found = list_checkpoints(fs, run_path)
    latest = next((f for f in found if f.path.rstrip("/") == latest_path.rstrip("/")), None)
    if latest is None:
        latest = inspect(fs, latest_path)
    older = [f for f in found if f.path != latest.path and (latest.step is None or (f.step is not None and f.step < latest.step))]
    return [latest, *older]


def _reason(exc: CheckpointError) -> str:
    """"checkpoint <path> cannot be used: X" -> "cannot be used: X" (describe() names the directory)."""
    return re.sub(r"^checkpoint \S+ ", "", str(exc))


def describe(found: list[Found]) -> str:
    return "; ".join(f"{posixpath.basename(f.path)}: {f.problem}" for f in found)


def choose(fs: pafs.FileSystem, latest_path: str, *, load: Callable[[str], object],
           warn: Callable[[str], None]) -> tuple[Found, object]:
    """The newest usable checkpoint from Ray's latest backwards, and what `load(path)` made of it.

    `load` raises CheckpointError for a checkpoint that fails its full check (digests, weights_only
    load); each one skipped is reported through `warn`.
    """
    tried = []
    for cand in candidates(fs, latest_path):
        if cand.problem is None:
            try:
                loaded = load(cand.path)
            except CheckpointError as exc:
                cand = Found(cand.path, cand.step, _reason(exc))
            else:
                if tried:
                    warn(f"[raylpclip] warning: skipped unusable checkpoints ({describe(tried)}); "
                         f"resuming from {posixpath.basename(cand.path)} (step {cand.step})")
                return cand, loaded
        tried.append(cand)
    raise CheckpointError(f"none of the {len(tried)} checkpoints in {posixpath.dirname(latest_path.rstrip('/'))} "
                          f"can be used ({describe(tried)}); use a new run name, or delete the run directory "
                          "to start over")


def preflight(fs: pafs.FileSystem, run_path: str, *, warn: Callable[[str], None],
              verify: Callable[[str], None] | None = None) -> None:
    """Before Ray starts: fail in one line when the run has checkpoints and none is usable, and warn
    when the newest is not. Sizes against manifests always; `verify(path)` (raises CheckpointError)
    additionally for local storage, where reading the files costs nothing but time."""
    found = list_checkpoints(fs, run_path)
    for i, f in enumerate(found):
        if f.problem is None and verify is not None:
            try:
                verify(f.path)
            except CheckpointError as exc:
                found[i] = Found(f.path, f.step, _reason(exc))
                continue
        if found[i].problem is None:
            break  # the newest usable one: older ones are not needed
    good = next((f for f in found if f.problem is None), None)
    if found and good is None:
        raise CheckpointError(f"run directory {run_path} has {len(found)} checkpoints and none can be used "
                              f"({describe(found)}); use a new run name, or delete the run directory to start over")
    if found and found[0].problem is not None:
        warn(f"[raylpclip] warning: unusable checkpoints ({describe(found[:found.index(good)])}); the run "
             f"resumes from {posixpath.basename(good.path)} (step {good.step})")
