"""Killing a whole command (driver, its Ray instance, its workers) as abruptly as losing the machine."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from typing import Callable


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`, its process group and every descendant, and wait until they are all gone. Ray's
    raylet starts workers in process groups of their own: a group kill alone leaves them training
    (and writing records) for a few more steps, until they notice their raylet is gone."""
    import psutil  # Ray's own dependency

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def run_until(cmd: list[str], *, pattern: str | None = None, until: Callable[[], object] | None = None,
              env: dict | None = None, timeout: float = 600) -> list[str]:
    """Run `cmd` in its own process group and SIGKILL the whole group (driver, its Ray instance, its
    workers) as soon as a line of its output matches `pattern` or `until()` is true (e.g. a probe
    shows a step): as abrupt as losing the machine. Returns the output lines; raises if neither
    happened before the command ended or `timeout` passed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline, matched = time.monotonic() + timeout, False
    try:
        while not matched and proc.poll() is None and time.monotonic() < deadline:
            matched = bool((pattern and any(re.search(pattern, line) for line in list(lines)))
                           or (until is not None and until()))
            time.sleep(0.1)
    finally:
        kill_tree(proc)
        reader.join(timeout=5)
    if not matched:
        raise RuntimeError(f"the kill condition never held (exit code {proc.returncode}):\n" + "".join(lines[-30:]))
    return lines
