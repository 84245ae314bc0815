"""End to end through the job API: a real, separate local Ray cluster (`ray start --head` on 127.0.0.1,
token authentication on), a sweep submitted with jobs/submit.sh (`ray job submit`), its driver killed
mid-sweep with `ray job stop`, the same command submitted again resuming it; requests without the
token are refused.

The cluster has its own temp dir, ports and token, and is started and stopped from subprocesses, so
the session's in-process Ray instance never sees it. It is stopped by killing exactly the processes it
started (they carry a marker in their environment): `ray stop` would stop every Ray instance on the
machine, the session's included.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raylpclip.config import PretrainConfig, load_config

from .conftest import _free_port

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MARKER = "RAYLPCLIP_TEST_CLUSTER"

SWEEP = """
name: jobsweep
output_dir: {out}
data: {{train: {train}, eval: {eval}, decode_batch_size: 64, decode_concurrency: 1, shuffle_buffer: 64,
        eval_max_samples: 144}}
model:
  vocab_size: 400
  overrides: {{vision.patch_size: 16, vision.num_hidden_layers: 1, text.num_hidden_layers: 1}}
optim: {{warmup_steps: 2}}
train: {{steps: 8, batch_size: 16, num_workers: 1, checkpoint_every: 4, eval_every: 4, log_every: 2}}
eval: {{batch_size: 144}}
sweep:
  metric: acc1
  mode: max
  search: optuna
  num_samples: 2
  max_concurrent_trials: 1
  scheduler: asha
  space:
    optim.lr: loguniform(1e-4, 1e-2)
    psd.a_max: [0.0, 0.5]
"""


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(32)
        self.address = ""
        # The token travels in the environment of everything this cluster starts (never in a file here).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # `ray start` turns --node-ip-address=127.0.0.1 into the machine's outward address unless Ray is
        # told this is a single-node (no multi-node cluster) instance: then everything stays on loopback.
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, PATH=f"{VENV_BIN}:{self.env['PATH']}",
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0", **{MARKER: str(root)})

    def start(self, attempts: int = 3) -> None:
        """`ray start --head`; retried on fresh ports when the raylet misses Ray's fixed 30 s start-up
        window (a loaded machine), after removing what the failed attempt left."""
        for attempt in range(attempts):
            self.gcs_port, self.dashboard_port = _free_port(), _free_port()
            self.address = f"http://127.0.0.1:{self.dashboard_port}"
            done = subprocess.run(self._start_command(), env=self.env, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                break
            self.stop()
            assert attempt + 1 < attempts and "timed out during startup" in done.stderr, done.stdout + done.stderr
        deadline = time.monotonic() + 120
        while self.http("/api/jobs/", token=self.token)[0] != 200:  # the job API answers once the dashboard is up
            assert time.monotonic() < deadline, "the dashboard of the test cluster did not come up"
            time.sleep(1)

    def _start_command(self) -> list[str]:
        ports = {"--port": self.gcs_port, "--dashboard-port": self.dashboard_port,
                 "--ray-client-server-port": _free_port(), "--dashboard-agent-listen-port": _free_port(),
                 "--dashboard-agent-grpc-port": _free_port(), "--metrics-export-port": _free_port(),
                 "--runtime-env-agent-port": _free_port()}
        return [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                "--num-cpus=8", f"--temp-dir={self.root}", "--include-dashboard=true", "--disable-usage-stats",
                *[f"{flag}={port}" for flag, port in ports.items()]]

    def http(self, path: str, *, token: str | None, body: dict | None = None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.address + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:  # not listening yet
            return 0, str(exc)

    def processes(self) -> list[int]:
        """Pids of everything this cluster started: its environment carries the marker."""
        needle = f"{MARKER}={self.root}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if needle in (proc / "environ").read_bytes().split(b"\0"):
                        pids.append(int(proc.name))
                except OSError:
                    pass  # gone, or not ours to read
        return pids

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rlp-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not c.processes(), "processes of the test cluster survived"
        shutil.rmtree(root, ignore_errors=True)


def submit(c: Cluster, submission_id: str, *args: str) -> None:
    env = dict(c.env, RAY_ADDRESS=c.address, SUBMIT_FLAGS=f"--no-wait --submission-id {submission_id}")
    done = subprocess.run([str(REPO / "jobs" / "submit.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def trial_states(sweep_dir: Path) -> dict[str, str]:
    """Trial id -> status, from the newest experiment state Tune saved (what a restore would read)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return {}  # being written
    out = {}
    for trial_json, _ in data.get("trial_data", []):
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def wait_until(check, *, timeout: float, what: str, client=None, job: str | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if client is not None and job is not None:
            from ray.job_submission import JobStatus

            status = client.get_job_status(job)
            assert status not in (JobStatus.FAILED, JobStatus.STOPPED), \
                f"job {job} {status.value}:\n{client.get_job_logs(job)[-4000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_submitted_sweep_survives_its_driver_dying(cluster, synthetic_shards, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {cluster.token}"})
    out = tmp_path / "out"
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP.format(out=out, train=synthetic_shards["webdataset"], eval=synthetic_shards["eval"]))
    sweep_dir = out / "jobsweep"
    t0 = time.perf_counter()

    # 1. Submit; once the first trial is finished in the saved experiment state, kill the driver.
    submit(cluster, "sweep-1", "sweep", str(config))
    wait_until(lambda: "TERMINATED" in trial_states(sweep_dir).values(), timeout=900,
               what="the first trial to finish", client=client, job="sweep-1")
    client.stop_job("sweep-1")
    wait_until(lambda: client.get_job_status("sweep-1") in (JobStatus.STOPPED, JobStatus.FAILED), timeout=120,
               what="the job to stop")
    t_stop = time.perf_counter()
    finished = [t for t, s in trial_states(sweep_dir).items() if s == "TERMINATED"]
    assert len(finished) == 1 and not (sweep_dir / "results.csv").exists()
    first_dir = next(sweep_dir.glob(f"sweep_trial_{finished[0]}_*"))
    first_results = (first_dir / "result.json").read_text()

    # 2. The same command again: the sweep resumes; the finished trial is not trained again.
    submit(cluster, "sweep-2", "sweep", str(config))
    wait_until(lambda: client.get_job_status("sweep-2") in (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=900,
               what="the resubmitted sweep")
    logs = client.get_job_logs("sweep-2")
    assert client.get_job_status("sweep-2") == JobStatus.SUCCEEDED, logs[-4000:]
    t_end = time.perf_counter()
    assert "resuming sweep jobsweep" in logs
    assert (first_dir / "result.json").read_text() == first_results
    assert f"trial {finished[0]} started" not in logs

    with (sweep_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"done", "stopped early"}
    for r in rows:  # zero-shot acc1 on 144 eval images: a multiple of 1/144
        assert 0.0 <= float(r["acc1"]) <= 1.0 and abs(float(r["acc1"]) * 144 - round(float(r["acc1"]) * 144)) < 1e-3
    summary = json.loads((sweep_dir / "summary.json").read_text())
    best = max((r for r in rows if r["status"] == "done"), key=lambda r: float(r["acc1"]))
    assert summary["best_metric"] == pytest.approx(float(best["acc1"]))
    best_cfg = load_config(PretrainConfig, str(sweep_dir / "best.yaml"))
    assert best_cfg.optim.lr == pytest.approx(float(best["optim.lr"]))
    assert best_cfg.psd.a_max == float(best["psd.a_max"]) and best_cfg.name == "jobsweep-best"
    print(f"\n[job-submit] first job to the kill {t_stop - t0:.0f}s, resumed job {t_end - t_stop:.0f}s; "
          f"rows {[(r['trial_id'], r['status'], r['acc1']) for r in rows]}")

    # 3. Without the token (or with a wrong one) the job API refuses the same requests.
    body = {"entrypoint": f"python -m raylpclip sweep {config}", "submission_id": "no-token"}
    for token in (None, "0" * 64):
        assert cluster.http("/api/jobs/", token=token, body=body)[0] in (401, 403)
        assert cluster.http("/api/jobs/", token=token)[0] in (401, 403)
    status, listing = cluster.http("/api/jobs/", token=cluster.token)
    assert status == 200
    assert sorted(j["submission_id"] for j in json.loads(listing)) == ["sweep-1", "sweep-2"]
