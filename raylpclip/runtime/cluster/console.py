"""What a user sees of a run: raylpclip's own lines, and real errors. Ray's internal chatter (worker
start-up notices, core-worker log lines, Ray Data's per-dataset lines and progress-bar notices, the
token-authentication notice) stays in Ray's log files, whose directory the first line names;
`raylpclip --verbose ...` or RAYLPCLIP_VERBOSE=1 shows all of it as Ray prints it.

Ray forwards every worker's stdout and stderr to the driver and prints each line behind a
`(ActorName pid=N)` prefix. Here the driver's printing handler is replaced by one that prints raylpclip's
lines without that prefix (they say which run and step they are about) and a worker's Python traceback
whole; the rest is dropped from the console only.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

VERBOSE_ENV = "RAYLPCLIP_VERBOSE"
OURS = "[raylpclip]"
HANDLER = "ray_print_logs"  # the name ray.init gives the handler that prints worker output
_PROBLEM = re.compile(r"^Traceback \(most recent call last\)|^\w*(Error|Exception): ")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False")


# Ray's notices that raylpclip says itself, shorter (the session line), or that say nothing to a user:
# the token-authentication notice at every start, and the raylet's note that workers started in a burst
# (a Ray Data actor pool and a Train worker group start together by design).
_TOKEN_NOTICE = "Token authentication is enabled"
_RAYLET_CHATTER = re.compile(r"PYTHON worker processes have been started on node")


def _not_token_notice(record: logging.LogRecord) -> bool:
    return _TOKEN_NOTICE not in record.getMessage()


def quiet_driver() -> None:
    """Before ray.init: no token-authentication notice (said once, shorter, by raylpclip), no Hugging Face
    progress bars. ray.init sets the driver's "ray" logger to its `logging_level` (`init_logging_level`)."""
    if verbose():
        return
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if _not_token_notice not in notice.filters:
        notice.addFilter(_not_token_notice)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; without it there is nothing to quieten
        pass


def init_logging_level() -> int:
    """ray.init's `logging_level` for the driver: warnings and errors (a task that cannot be scheduled,
    a node lost) but not its INFO lines ("Started a local Ray instance", said by the session line)."""
    return logging.INFO if verbose() else logging.WARNING


def kept_lines(lines: list[str]) -> list[str]:
    """The lines of one worker's output batch a user sees: raylpclip's, and a traceback from its first
    line to the end of the batch (Ray sends a traceback in one batch)."""
    out = []
    for i, line in enumerate(lines):
        if _PROBLEM.search(line) and line.startswith("Traceback"):
            return out + list(lines[i:])
        if line.lstrip().startswith(OURS) or (_PROBLEM.search(line) and "ray" not in line.split(":")[0].lower()):
            out.append(line)
    return out


def _print_filtered(data: dict[str, Any]) -> None:
    sink = sys.stderr if data.get("is_err") else sys.stdout
    if data.get("pid") == "autoscaler":
        return
    for line in kept_lines(list(data.get("lines", []))):
        print(line, file=sink, flush=True)


def _raylet_messages(original):
    """Ray's driver prints the raylet's messages (worker-pool bursts, but also a task killed for memory)
    through `print_to_stdstream`, not the dispatcher: keep the real ones, drop the burst notes."""
    def print_kept(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        if data.get("pid") == "raylet" and all(_RAYLET_CHATTER.search(line) for line in data.get("lines", [])):
            return
        original(data, ignore_prefix=ignore_prefix)

    print_kept.raylpclip = True
    return print_kept


def install_filter() -> bool:
    """After ray.init: replace the driver's printing of worker output by `_print_filtered`, and drop the
    raylet's burst notes. False (and Ray's own printing kept) on a Ray without that handler, or in
    verbose mode."""
    if verbose():
        return False
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if not any(name == HANDLER for name, _ in dispatcher.handlers):
        return False
    dispatcher.remove_handler(HANDLER)
    dispatcher.add_handler(HANDLER, _print_filtered)
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is not None and not getattr(original, "raylpclip", False):
        ray_worker.print_to_stdstream = _raylet_messages(original)
    return True


def session_line(dashboard_url: str | None) -> str:
    """One line for what `ray.init` would print: where Ray's own logs and the dashboard are."""
    import ray

    try:
        logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    except AttributeError:  # no local node object: Ray's internals moved, or a client connection
        logs = ""
    parts = [f"logs in {logs}" if logs else "joined a running cluster"]
    if dashboard_url:
        parts.append(f"dashboard {dashboard_url}")
    tail = "" if verbose() else f"; its own output goes there (raylpclip --verbose or {VERBOSE_ENV}=1 shows it here)"
    return f"{OURS} Ray: " + ", ".join(parts) + tail
