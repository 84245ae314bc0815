"""Choosing the checkpoint a run resumes from, on local disk or object storage (pyarrow filesystems).

A restarted worker group resumes from the run's newest *complete* checkpoint: every file its
manifest lists, at the recorded size and sha256, and a state that loads with weights_only=True.
That is usually Ray Train's latest registered checkpoint, but not always: a registered one may be
damaged (truncated on disk, replaced), and a complete one may never have been registered (the
failure came between its upload and the controller collecting every worker's report). Each
checkpoint passed over, and a choice other than Ray's, is said in one line; when the run has
checkpoints and none is usable it stops with one line naming each and what is wrong with it. The
driver runs the same listing before Ray starts (sizes, and for local storage the full check), so a
run whose checkpoints are all broken fails in seconds.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Callable

import pyarrow.fs as pafs

from raylpclip.engine.checkpoint_state import MANIFEST_FILE, META_FILE, STATE_FILE, CheckpointError, manifest_files

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
    files = manifest_files(lambda name: _read_json(fs, posixpath.join(directory, name)))
    if isinstance(files, str):
        return Found(directory, step, files)
    for name, rec in sorted(files.items()):
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


def _reason(exc: CheckpointError) -> str:
    """"checkpoint <path> cannot be used: X" -> "cannot be used: X" (describe() names the directory)."""
    return re.sub(r"^checkpoint \S+ ", "", str(exc))


def describe(found: list[Found]) -> str:
    return "; ".join(f"{posixpath.basename(f.path)}: {f.problem}" for f in found)


def choose(fs: pafs.FileSystem, run_path: str, *, registered: str | None, load: Callable[[str], object],
           warn: Callable[[str], None]) -> tuple[Found, object] | None:
    """The run's newest usable checkpoint and what `load(path)` made of it; None when it has none.

    Every checkpoint directory of the run counts, not only those Ray Train registered (`registered`:
    the latest it did): a checkpoint is registered only after all workers' reports for it reach the
    controller, and a failure in between (a worker killed right after an upload finished) leaves a
    complete checkpoint that Ray forgets. Completeness is this module's check plus `load`, which
    raises CheckpointError for one that fails its full check (digests, weights_only load); each
    checkpoint skipped, and a choice other than Ray's, is reported through `warn`.
    """
    found = list_checkpoints(fs, run_path)
    if registered and all(f.path.rstrip("/") != registered.rstrip("/") for f in found):
        found.append(inspect(fs, registered))
    tried = []
    for cand in found:
        if cand.problem is None:
            try:
                loaded = load(cand.path)
            except CheckpointError as exc:
                cand = Found(cand.path, cand.step, _reason(exc))
            else:
                name = posixpath.basename(cand.path)
                if tried:
                    warn(f"[raylpclip] warning: skipped unusable checkpoints ({describe(tried)}); "
                         f"resuming from {name} (step {cand.step})")
                elif (registered or "").rstrip("/") != cand.path.rstrip("/"):
                    known = posixpath.basename(registered) if registered else "none"
                    warn(f"[raylpclip] resuming from {name} (step {cand.step}): complete in storage, newer than "
                         f"Ray Train's latest registered checkpoint ({known}), which a failure cut short")
                return cand, loaded
        tried.append(cand)
    if not tried:
        return None
    raise CheckpointError(f"none of the {len(tried)} checkpoints in {run_path} can be used ({describe(tried)}); "
                          "use a new run name, or delete the run directory to start over")


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
