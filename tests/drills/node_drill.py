"""Node-loss drill: a two-node Ray cluster on this machine, a run whose Train workers need a `trainer`
resource that each node offers once (so one worker lands on each), and the second node removed once
the run's checkpoint of a given step has reached storage. With an elastic worker group (train.min_workers) the run goes on with
the workers that still fit; the progress lines say with how many.

    python -m tests.drills.node_drill RESULT.json CHECKPOINT_STEP key=value ...

runs `raylpclip pretrain` with the given overrides (plus ray.address of the drill cluster and the
worker resource) and writes a JSON result: the summary, the trace records' numbers and how many
workers trained before and after the loss. Every node listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def _cluster(head_cpus: int, node_cpus: int):
    from ray.cluster_utils import Cluster

    from raylpclip.runtime.cluster.session import dashboard_port, loopback_node

    with loopback_node():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "resources": {"trainer": 1}, "node_ip_address": "127.0.0.1",
            "dashboard_host": "127.0.0.1", "include_dashboard": True,
            "dashboard_port": dashboard_port(),
            # Notice a lost node in ~3 s, not Ray's default ~30 s of missed health checks: the drill
            # measures the run's recovery, not the detection delay.
            "_system_config": {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                               "health_check_failure_threshold": 3}})
        node = cluster.add_node(num_cpus=node_cpus, resources={"trainer": 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return cluster, node


def run(result_path: str, checkpoint_step: int, overrides: list[str], *, head_cpus: int = 6, node_cpus: int = 1) -> dict:
    import ray

    from raylpclip.config import PretrainConfig, load_config
    from raylpclip.runtime.cluster.session import loopback_node
    from raylpclip.runtime.train.pretrain_driver import run_pretrain
    from tests.drills.checkpoint_damage import persisted_steps
    from tests.drills.worker_kills import TRACE_ENV, TraceRecords, wait_for

    probe = os.environ.setdefault(TRACE_ENV, tempfile.mkdtemp(prefix="node-drill-"))
    cluster, node = _cluster(head_cpus, node_cpus)
    removed: dict = {}

    run_dir = load_config(PretrainConfig, None, overrides).run_dir

    def remove_when_past_step():
        def on_node():  # a worker trains on the doomed node, and the checkpoint has reached storage
            records = TraceRecords.read(probe)
            return checkpoint_step in persisted_steps(run_dir) and any(w["node"] == node.node_id for w in records.workers)
        wait_for(on_node, timeout=900, what=f"checkpoint {checkpoint_step} with a worker on the second node")
        removed.update(step=TraceRecords.read(probe).max_step(), time=time.time())
        print(f"[drill] removing node {node.node_id[:8]} after step {removed['step']}", flush=True)
        cluster.remove_node(node, allow_graceful=False)

    threading.Thread(target=remove_when_past_step, daemon=True).start()
    try:
        with loopback_node():  # else Ray swaps 127.0.0.1 for the machine's address, where nothing listens
            ray.init(address=cluster.address, log_to_driver=True)
        cfg = load_config(PretrainConfig, None, [*overrides, f"ray.address={cluster.address}",
                                                  "train.worker_resources={trainer: 1}"])
        summary = run_pretrain(cfg)
    finally:
        ray.shutdown()
        cluster.shutdown()
    records = TraceRecords.read(probe)
    result = {"summary": summary, "removed_after_step": removed.get("step"), "replayed": records.replayed(),
              "worker_starts": [{k: w[k] for k in ("rank", "world", "start_step")} for w in records.workers]}
    Path(result_path).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    # The drill's driver joins its cluster by address, and Ray turns token auth on by itself only for
    # a local instance it starts: the joining client must be told, before Ray is imported, to send
    # the token (the one in ~/.ray/auth_token that the in-process head was started with).
    assert "ray" not in sys.modules
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
