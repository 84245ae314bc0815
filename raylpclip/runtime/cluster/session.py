"""Starting or joining Ray. Local instances listen on loopback only and keep token auth on."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import ray

from raylpclip.config import RayConfig
from raylpclip.runtime.cluster import console, idle_scheduler

log = logging.getLogger(__name__)
START_ATTEMPTS = 3


def ensure_ray(cfg: RayConfig) -> None:
    """Join `cfg.address` (or RAY_ADDRESS), else start a local instance.

    A local instance gets `cfg.num_cpus` logical CPUs, more than the machine has cores: Train workers
    reserve theirs, and Ray Data must still get CPUs for reading and decoding or the job hangs.
    """
    if ray.is_initialized():
        return
    # Token auth: Ray >= 2.59 turns it on for local instances by itself and writes the token to
    # ~/.ray/auth_token. Setting RAY_AUTH_MODE here would come too late: `import ray` has already read
    # it, and a client and GCS that disagree about auth cannot talk.
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    console.quiet_driver()
    if address:
        with loopback_node():  # a 127.0.0.1 address stays loopback (the instance listens there only)
            context = ray.init(address=address, log_to_driver=True, runtime_env=JOB_RUNTIME_ENV,
                               logging_level=console.init_logging_level())
        _started(context)
        return
    for attempt in range(1, START_ATTEMPTS + 1):
        before = _children()
        try:
            with loopback_node(), _env(RAY_preallocate_plasma_memory="1" if cfg.preallocate_object_store else None):
                context = ray.init(
                    # "local": always a new instance. Without it ray.init joins whatever instance
                    # /tmp/ray/ray_current_cluster names, which a crashed test cluster leaves behind.
                    address="local",
                    num_cpus=cfg.num_cpus,
                    _node_ip_address="127.0.0.1",  # never listen beyond loopback in local mode
                    include_dashboard=cfg.dashboard,
                    dashboard_host="127.0.0.1",
                    dashboard_port=dashboard_port(),
                    log_to_driver=True,
                    logging_level=console.init_logging_level(),
                    runtime_env=JOB_RUNTIME_ENV,
                    object_store_memory=int(cfg.object_store_gb * 2**30) or None,
                )
            break
        except Exception as exc:
            # Ray gives a starting node a fixed 30 s to register with the GCS; a machine busy with other
            # work can miss that, and a second start usually makes it.
            if "timed out during startup" not in str(exc) or attempt == START_ATTEMPTS:
                raise
            ray.shutdown()
            _stop_started_since(before)  # the failed attempt's GCS, raylet, dashboard: no one owns them now
            log.warning("local Ray did not start in time (attempt %d of %d); starting again", attempt, START_ATTEMPTS)
    _started(context)


def _started(context) -> None:
    """What every driver does once Ray is up: the console filter and its one line, Ray Data's settings,
    the paced scheduling loop."""
    console.install_filter()
    url = getattr(context, "dashboard_url", None)
    print(console.session_line(f"http://{url}" if url and "://" not in url else url), flush=True)
    idle_scheduler.install()
    quiet_ray_data()


@contextlib.contextmanager
def _env(**values: str | None):
    """Environment variables for the processes started within (the raylet reads its settings at start)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Every worker process of the job (Train's streaming-split coordinator, Tune trials) patches Ray Data's
# idle scheduling loop on start (runtime/cluster/idle_scheduler.py); a submitted job's own runtime_env merges in.
JOB_RUNTIME_ENV = {"worker_process_setup_hook": idle_scheduler.HOOK}

DEFAULT_DASHBOARD_PORT = 8265


def dashboard_port() -> int:
    """Ray's usual dashboard port when it is free, else any free loopback port: Ray 2.60 refuses to
    start a second local instance (another job, a test's cluster) whose dashboard port is taken."""
    for port in (DEFAULT_DASHBOARD_PORT, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free loopback port for the Ray dashboard")


def _children() -> set[int]:
    import psutil  # Ray's own dependency

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop_started_since(before: set[int]) -> None:
    """Terminate the processes this process started since `before` (then kill what lingers)."""
    import psutil

    procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


@contextlib.contextmanager
def loopback_node():
    """Make ray.init keep `_node_ip_address="127.0.0.1"`.

    ray.init passes a loopback node address through `resolve_ip_for_localhost`, which on Linux swaps
    it for the machine's routable IP; the GCS, raylet, workers and agents then listen on all
    interfaces. With that swap off the node is 127.0.0.1 and Ray (>= 2.50) binds its servers there.
    tests/integration/test_security.py lists the sockets of a local instance to keep this true.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by services.get_node_ip_address at call time
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def quiet_ray_data() -> None:
    # Ray Data's per-operator progress bars flood a terminal and CI logs; the trainer prints its own.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
