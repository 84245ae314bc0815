"""Starting or joining Ray. Local instances listen on loopback only and keep token auth on."""

from __future__ import annotations

import logging
import os

import ray

from raylpclip.config import RayConfig

log = logging.getLogger(__name__)


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
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        num_cpus=cfg.num_cpus,
        _node_ip_address="127.0.0.1",  # never listen beyond loopback in local mode
        include_dashboard=cfg.dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
    )
    quiet_ray_data()


def quiet_ray_data() -> None:
    # Ray Data's per-operator progress bars flood a terminal and CI logs; the trainer prints its own.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
