"""Stop Ray Data's scheduling loop from spinning while the trainer is the bottleneck.

Ray Data's StreamingExecutor runs a loop that blocks in `ray.wait(active tasks, timeout=0.1)`. In
the steady state of a compute-bound training run nothing blocks: the decode tasks' outputs are ready
but the output budget is full until the trainer takes a batch, so `ray.wait` returns at once and the
loop spins through its resource bookkeeping and metrics. `raylpclip bench train` showed the
streaming-split coordinator burning 50-100% of a core that way on the 2-core machine, next to a
worker whose two torch threads needed both cores: the 1-worker pipeline ran at 0.38x its compute
limit. (Ray tracks the spin as a known cost, ray-project/ray#65060.)

`install()` paces the loop: a step that moved nothing (the operators' progress counters are unchanged)
and took less than MIN_STEP_S is followed by a sleep up to it. Each further such step in a row doubles
that minimum, up to MAX_STEP_S, so a loop that stays idle runs about 1/MAX_STEP_S times a second; the
first step that moves data resets it. Steps that move data are never delayed; when the trainer takes a
batch, the loop notices within MAX_STEP_S (Ray's own `ray.wait` in the loop waits up to 0.1 s), while
the batches already prefetched keep the trainer fed. Why the doubling: with a flat 50 ms the paced loop
still ran ~20 steps a second at ~1.9 ms of CPU each in `bench train`'s 1-worker pipeline, 0.04 of the
2 cores the training step needs. It runs in every Ray worker process of a raylpclip job (the
`worker_process_setup_hook` that session.ensure_ray sets), where Train's streaming-split coordinator
runs the loop, and in the driver.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import logging
import sys
import time

log = logging.getLogger(__name__)

MIN_STEP_S = 0.05
MAX_STEP_S = 0.2
_MARK = "_raylpclip_paced"
_PAUSE = "_raylpclip_pause_s"  # on the executor: how long its next quick idle step lasts
EXECUTOR = "ray.data._internal.execution.streaming_executor"


def install() -> bool:
    """Pace the running Ray Data's scheduling loop; True when it is (now or already) paced."""
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    step = getattr(StreamingExecutor, "_scheduling_loop_step", None)
    if step is None:
        # A Ray whose executor has no such step: leave it alone (tests/unit/test_idle_scheduler.py fails
        # on the pinned Ray, so an upgrade that drops the hook point is noticed).
        log.debug("Ray Data's StreamingExecutor has no _scheduling_loop_step; its loop is left as is")
        return False
    if not getattr(step, _MARK, False):
        StreamingExecutor._scheduling_loop_step = paced(step)
    return True


def paced(step, min_step_s: float = MIN_STEP_S, max_step_s: float = MAX_STEP_S):
    """`step(self, topology)` that, when it changed nothing (no input taken, task sent or finished, output
    made or handed on), lasts at least `min_step_s`, doubled for each quick idle step before it in a row,
    up to `max_step_s` (it sleeps the rest). Steps that moved data are not delayed and end the run of idle
    steps, so a data-bound pipeline runs as fast as before."""

    @functools.wraps(step)
    def wrapper(self, topology):
        start, before = time.perf_counter(), progress(topology)
        try:
            return step(self, topology)
        finally:
            took = time.perf_counter() - start
            if progress(topology) != before:
                setattr(self, _PAUSE, min_step_s)
            elif took < min_step_s:  # the spin. A step that blocked in ray.wait is neither padded nor counted.
                pause = getattr(self, _PAUSE, min_step_s)
                time.sleep(pause - took)
                setattr(self, _PAUSE, min(2 * pause, max_step_s))

    setattr(wrapper, _MARK, True)
    return wrapper


PROGRESS = ("num_inputs_received", "num_tasks_submitted", "num_tasks_finished", "num_task_outputs_generated",
            "num_outputs_taken")


def progress(topology) -> tuple:
    """The operators' progress counters (OpRuntimeMetrics); equal before and after an idle step."""
    return tuple(getattr(op.metrics, name, 0) for op in topology for name in PROGRESS)


def install_when_imported() -> None:
    """`install()` now if Ray Data's executor is imported, else right after its first import. Importing
    it costs a second of CPU, which the job's many processes that never run Ray Data should not pay."""
    if EXECUTOR in sys.modules:
        install()
    elif not any(isinstance(f, _InstallOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallOnImport())


class _InstallOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands the executor module's import to the usual finders and runs
    `install()` once the module has executed."""

    def find_spec(self, name, path=None, target=None):
        if name != EXECUTOR:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def execute_then_install(module):
                execute(module)
                install()

            spec.loader.exec_module = execute_then_install
        return spec


def setup_hook() -> None:
    """Ray's `worker_process_setup_hook` (a module path in the job's runtime_env)."""
    install_when_imported()


HOOK = f"{__name__}.setup_hook"
