"""Fault injection for tests and drills: find and kill Train workers, kill a driver once its output
says so, corrupt checkpoints, put an S3 endpoint behind a proxy that fails requests on purpose.

Nothing here runs unless asked. The worker side is a probe: when the driver's environment has
`RAYLPCLIP_FAULT_PROBE=<dir>`, every Train worker writes `<dir>/worker-<rank>-<pid>.json` when it
starts and appends each batch it trains on (the rows' positions) to `<dir>/consumed-<rank>.jsonl`.
A test reads them to find a worker's pid and to count which samples were trained on twice. The
helpers take any command line or pid, so the same drills apply to other commands.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable

PROBE_ENV = "RAYLPCLIP_FAULT_PROBE"


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray: no node
        return None


# ----------------------------------------------------------------------------------- worker probe

class Probe:
    """Worker side: pid marker and the positions of every batch handed to the training loop."""

    def __init__(self, directory: str, *, rank: int, world: int, start_step: int, accum_steps: int):
        self.dir, self.rank, self.accum = Path(directory), rank, accum_steps
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid, self.batches, self.start_step = os.getpid(), 0, start_step
        marker = {"rank": rank, "pid": self.pid, "world": world, "start_step": start_step, "time": time.time(),
                  "node": _node_id()}
        (self.dir / f"worker-{rank}-{self.pid}.json").write_text(json.dumps(marker))
        self._log = open(self.dir / f"consumed-{rank}.jsonl", "a", buffering=1)

    @classmethod
    def from_config(cls, directory: str | None, **kwargs) -> "Probe | None":
        return cls(directory, **kwargs) if directory else None

    def consumed(self, source: int, epoch: int, positions) -> None:
        step = self.start_step + self.batches // self.accum + 1  # the step this micro-batch goes into
        self.batches += 1
        self._log.write(json.dumps({"pid": self.pid, "step": step, "source": source, "epoch": epoch,
                                    "positions": [int(p) for p in positions.tolist()]}) + "\n")


@dataclass
class ProbeRecords:
    """What a probe directory says about a run (or a run and its resumptions)."""

    workers: list[dict] = field(default_factory=list)  # the markers, in start order
    batches: list[dict] = field(default_factory=list)  # every rank's consumed lines

    @classmethod
    def read(cls, directory: str | Path) -> "ProbeRecords":
        directory = Path(directory)
        workers = sorted((json.loads(p.read_text()) for p in directory.glob("worker-*.json")), key=lambda w: w["time"])
        batches = [json.loads(line) for p in sorted(directory.glob("consumed-*.jsonl"))
                   for line in p.read_text().splitlines() if line.strip()]
        return cls(workers, batches)

    def pid(self, rank: int) -> int | None:
        """The latest pid of the worker with this rank."""
        pids = [w["pid"] for w in self.workers if w["rank"] == rank]
        return pids[-1] if pids else None

    def max_step(self) -> int:
        return max((b["step"] for b in self.batches), default=0)

    def seen(self, *, epoch: int = 0, source: int = 0) -> Counter:
        """How many times each sample (position) was trained on in `epoch` of `source`."""
        return Counter(p for b in self.batches if b["epoch"] == epoch and b["source"] == source for p in b["positions"])

    def replayed(self, *, epoch: int = 0, source: int = 0) -> int:
        """Extra trainings on samples already trained on in the same epoch."""
        return sum(n - 1 for n in self.seen(epoch=epoch, source=source).values() if n > 1)


def wait_for(condition: Callable[[], object], *, timeout: float, poll: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s")


def kill_worker_when(directory: str | Path, *, rank: int, when: Callable[[], object],
                     timeout: float = 600) -> threading.Thread:
    """In the background: once `when()` is true (e.g. `lambda: 10 in persisted_steps(run_dir)`),
    SIGKILL the Train worker with `rank` (the process Ray Train runs the train function in, found
    through the probe in `directory`). The thread's `.killed` is the pid it killed."""
    def run():
        def ready():
            return when() and ProbeRecords.read(directory).pid(rank)
        pid = wait_for(ready, timeout=timeout, what="the kill condition")
        os.kill(pid, signal.SIGKILL)
        thread.killed = pid

    thread = threading.Thread(target=run, daemon=True, name="kill-worker")
    thread.killed = None
    thread.start()
    return thread


# ----------------------------------------------------------------------------------- driver kill

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


# ----------------------------------------------------------------------------------- checkpoints

def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """A run's checkpoint directories, oldest first (by the step in their meta.json)."""
    dirs = [d for d in Path(run_dir).glob("checkpoint_*") if (d / "meta.json").is_file()]
    return sorted(dirs, key=lambda d: json.loads((d / "meta.json").read_text())["step"])


def persisted_steps(run_dir: str | Path) -> set[int]:
    """Steps of the run's checkpoints that have reached storage whole (manifest written last). With
    asynchronous uploads a checkpoint lands some steps after it was taken: kill after this, not after
    a step count, to know which checkpoint a restart finds."""
    from raylpclip.engine.checkpoint import check_checkpoint

    steps = set()
    for d in Path(run_dir).glob("checkpoint_*"):
        try:
            # every file the manifest lists, at its full size (an upload copies them in any order)
            if (d / "manifest.json").is_file() and check_checkpoint(d, digests=False) is None:
                steps.add(int(json.loads((d / "meta.json").read_text())["step"]))
        except (OSError, ValueError, KeyError):
            continue
    return steps


def truncate(path: str | Path, *, keep: float = 0.5) -> None:
    """Cut a file to `keep` of its size, as a crash or full disk mid-write would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------------- S3 errors

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    """An HTTP proxy in front of an S3 endpoint (e.g. moto_server) on 127.0.0.1 that answers some
    requests with 503 SlowDown instead of forwarding them. `fail(method, path) -> bool` decides per
    request; `injected` counts the failures sent, `forwarded` the rest.

        with FaultProxy("http://127.0.0.1:5000", fail=first_try_of(r"state\\.pt")) as proxy:
            ... data.s3.endpoint_url=proxy.url ...
    """

    def __init__(self, target: str, *, fail: Callable[[str, str], bool]):
        self.target = target.split("://", 1)[-1].rstrip("/")
        self.fail = fail
        self.injected: Counter = Counter()
        self.forwarded = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                body, chunked = self._body()
                with proxy._lock:
                    failing = proxy.fail(self.command, self.path)
                    if failing:
                        proxy.injected[(self.command, self.path.split("?")[0])] += 1
                    else:
                        proxy.forwarded += 1
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.target, timeout=60)
                hop = ("connection", "transfer-encoding", "expect", "content-length", "keep-alive")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                if chunked:
                    conn.request(self.command, self.path, body=iter([body]), headers=headers, encode_chunked=True)
                else:
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    # a HEAD answer keeps the object's length; other bodies are re-sent whole
                    if k.lower() not in ("transfer-encoding", "connection") and (
                            k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _body(self) -> tuple[bytes, bool]:
                """The request body, and whether it came chunked (HTTP/1.1 chunks are decoded here
                and sent on chunked again: the AWS SDK streams uploads that way)."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    length = int(self.headers.get("Content-Length") or 0)
                    return (self.rfile.read(length) if length else b""), False
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks), True
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler


def first_try_of(path_pattern: str, *, methods: Iterable[str] = ("PUT", "POST")) -> Callable[[str, str], bool]:
    """A FaultProxy rule: fail the first request of each method to each object whose path matches."""
    seen: set[tuple[str, str]] = set()
    methods = set(methods)
    regex = re.compile(path_pattern)

    def fail(method: str, path: str) -> bool:
        key = (method, path.split("?")[0])
        if method in methods and regex.search(key[1]) and key not in seen:
            seen.add(key)
            return True
        return False

    return fail
