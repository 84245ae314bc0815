"""Stopping a run cleanly on notice: a preemption or a SIGTERM becomes a checkpoint at the next step boundary
and a clean exit, and the same command resumes with no step lost.

Two notices reach a run:
- SIGTERM to the driver (`raylpclip pretrain` in a Kubernetes pod or under `ray job stop`, a spot VM going
  away, a user's `kill`): the driver's handler tells the workers through a small actor (`StopNotice`), and
  waits up to `train.stop_grace_s` for them; a second SIGTERM, or the grace running out, ends it at once.
- Ray's own preemption notice for a node the workers run on (a node drain with reason preemption, as the
  autoscaler and KubeRay send for spot terminations): Ray Train hands it to each worker
  (`ray.train.get_preemption_info`).

The workers poll both between steps (the actor from a background thread, so a step never waits on it) and
agree through one all-reduce per step, so every rank stops after the same step; then every rank takes part
in the checkpoint (engine/loop.py). Signal handlers can only be installed in a process's main thread, and a
Ray Train worker runs its loop in another one: the workers therefore learn of a SIGTERM through the driver,
which is where Kubernetes and `ray job stop` send it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable

import ray
import ray.train
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raylpclip.run_outcome import EXIT_STOPPED
from raylpclip.runtime.cluster.counters import head_node_id


@ray.remote(num_cpus=0)
class StopNotice:
    """The run's stop request, set by the driver, read by the workers."""

    def __init__(self):
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def get(self) -> str | None:
        return self.reason


def new_notice():
    # On the head node, like the skip counter: a worker node lost to the very preemption must not take it along.
    return StopNotice.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id(), soft=False)).remote()


@contextmanager
def stop_on_sigterm(notice, *, grace_s: float, say: Callable[[str], None]):
    """Within the block (the driver's fit), SIGTERM asks the workers to checkpoint and stop; the block then ends
    as a finished run would. A second SIGTERM, or `grace_s` seconds without the run ending, exits the process
    with status 143 at once (whatever the workers saved by then stays). Main thread only (Python's rule)."""
    state: dict = {"at": None, "timer": None}
    received, done = threading.Event(), threading.Event()

    def give_up(why: str) -> None:
        say(f"[raylpclip] {why}: exiting now; the run resumes from its newest checkpoint when the same command "
            "runs again")
        os._exit(EXIT_STOPPED)

    def on_sigterm(signum, frame) -> None:
        # Only flags here: a handler runs between two bytecodes of the main thread, which may be inside a print or
        # a Ray call of its own; printing or calling Ray from here could re-enter them.
        if received.is_set():
            os._exit(EXIT_STOPPED)  # a second SIGTERM
        received.set()

    def relay() -> None:
        while not received.wait(timeout=0.5):
            if done.is_set():
                return
        state["at"] = time.monotonic()
        say(f"[raylpclip] SIGTERM: the workers checkpoint after their current step and stop (grace period "
            f"{grace_s:g} s: train.stop_grace_s)")
        notice.request.remote("SIGTERM")
        timer = threading.Timer(grace_s, give_up, args=(f"the grace period of {grace_s:g} s ran out",))
        timer.daemon = True
        timer.start()
        state["timer"] = timer

    if threading.current_thread() is not threading.main_thread():  # e.g. a run inside a Tune trial's thread
        yield state
        return
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(target=relay, name="raylpclip-sigterm", daemon=True).start()
    try:
        yield state
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
        if state["timer"] is not None:
            state["timer"].cancel()


class StopWatch:
    """A worker's view of the notices: `reason()` is None until the driver's notice or a preemption of one of the
    run's nodes arrives. The actor is polled every `poll_s` from a daemon thread."""

    def __init__(self, notice, *, poll_s: float = 0.25):
        self.notice, self.poll_s = notice, poll_s
        self._reason: str | None = None
        if notice is not None:
            threading.Thread(target=self._poll, name="raylpclip-stop-notice", daemon=True).start()

    def _poll(self) -> None:
        while self._reason is None:
            try:
                self._reason = ray.get(self.notice.get.remote(), timeout=30)
            except ray.exceptions.GetTimeoutError:  # a loaded machine: ask again
                continue
            except ray.exceptions.RayActorError:  # the driver (and its notice) gone: Ray Train ends the workers
                return
            time.sleep(self.poll_s)

    def reason(self, *, ask_ray: bool) -> str | None:
        """The notice this worker has seen, if any. `ask_ray`: also ask Ray Train for a preemption notice, which is
        a barrier of all workers (`ray.train.get_preemption_info`): every rank must pass the same `ask_ray` at the
        same steps, or the ranks wait for each other forever."""
        if ask_ray:
            info = ray.train.get_preemption_info()
            if info is not None and self._reason is None:
                left = ("" if info.deadline_ms is None
                        else f", {max(0.0, info.deadline_ms / 1e3 - time.time()):.0f} s left")
                nodes = ", ".join(n[:8] for n in info.preempted_node_ids)
                self._reason = f"preemption notice for node(s) {nodes}{left}"
        return self._reason
