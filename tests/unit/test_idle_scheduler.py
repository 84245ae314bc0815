"""runtime/idle_scheduler: Ray Data's scheduling loop paced to MIN_STEP_S a step, doubling while idle up
to MAX_STEP_S, installed lazily."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest

from raylpclip.runtime.cluster import idle_scheduler


class FakeClock:
    """perf_counter/sleep stand-ins: a step 'takes' `step_s`, sleeps advance the clock and are recorded."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def topology():
    """Two operators with Ray Data's progress counters (OpRuntimeMetrics fields)."""
    return [SimpleNamespace(metrics=SimpleNamespace(**{name: 3 for name in idle_scheduler.PROGRESS})) for _ in range(2)]


def test_an_idle_quick_step_is_padded_to_the_minimum_and_keeps_its_result(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(idle_scheduler, "time", clock)

    def step(self, topology):
        clock.now += 0.004  # the spin: outputs ready but the budget full, nothing moves
        return "continue"

    wrapped = idle_scheduler.paced(step, min_step_s=0.05)
    assert wrapped(SimpleNamespace(), topology()) == "continue"
    assert len(clock.sleeps) == 1 and abs(clock.sleeps[0] - 0.046) < 1e-9


def test_idle_steps_in_a_row_double_the_pause_up_to_the_maximum_and_data_resets_it(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(idle_scheduler, "time", clock)
    moves = iter([False] * 5 + [True] + [False] * 3)

    def step(self, topology):
        clock.now += 0.004
        if next(moves):
            topology[0].metrics.num_outputs_taken += 1  # the trainer took a batch

    wrapped = idle_scheduler.paced(step, min_step_s=0.05, max_step_s=0.2)
    executor, ops = SimpleNamespace(), topology()
    for _ in range(8):
        wrapped(executor, ops)
    # 50, 100, 200, 200, 200 ms steps; the data step is not padded; then 50 and 100 ms again.
    assert [round(s, 6) for s in clock.sleeps] == [0.046, 0.096, 0.196, 0.196, 0.196, 0.046, 0.096]
    # Each executor counts its own idle steps: a second one starts at the minimum.
    wrapped(SimpleNamespace(), topology())
    assert round(clock.sleeps[-1], 6) == 0.046


def test_a_step_that_blocked_neither_sleeps_nor_lengthens_the_next_pause(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(idle_scheduler, "time", clock)
    durations = iter([0.004, 0.1, 0.004])  # quick idle, blocked in ray.wait for 0.1 s, quick idle

    def step(self, topology):
        clock.now += next(durations)

    wrapped = idle_scheduler.paced(step, min_step_s=0.05, max_step_s=0.2)
    executor, ops = SimpleNamespace(), topology()
    for _ in range(3):
        wrapped(executor, ops)
    assert [round(s, 6) for s in clock.sleeps] == [0.046, 0.096]


@pytest.mark.parametrize("counter", idle_scheduler.PROGRESS)
def test_a_quick_step_that_moved_data_is_not_delayed(monkeypatch, counter):
    clock = FakeClock()
    monkeypatch.setattr(idle_scheduler, "time", clock)

    def step(self, topology):
        clock.now += 0.004
        setattr(topology[1].metrics, counter, getattr(topology[1].metrics, counter) + 1)

    idle_scheduler.paced(step, min_step_s=0.05)(SimpleNamespace(), topology())
    assert clock.sleeps == []


def test_a_step_that_already_waited_is_not_delayed(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(idle_scheduler, "time", clock)

    def step(self, topology):
        clock.now += 0.1  # blocked in ray.wait on tasks in flight
        return True

    assert idle_scheduler.paced(step, min_step_s=0.05)(SimpleNamespace(), topology()) is True
    assert clock.sleeps == []


def test_a_failing_step_still_raises(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(idle_scheduler, "time", clock)

    def step(self, topology):
        raise ValueError("operator failed")

    try:
        idle_scheduler.paced(step)(SimpleNamespace(), topology())
    except ValueError as e:
        assert "operator failed" in str(e)
    else:
        raise AssertionError("the step's error was swallowed")


def test_install_paces_the_pinned_rays_executor_once():
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    assert idle_scheduler.install()  # fails when a Ray upgrade removes the hook point
    first = StreamingExecutor._scheduling_loop_step
    assert getattr(first, idle_scheduler._MARK)
    assert idle_scheduler.install()
    assert StreamingExecutor._scheduling_loop_step is first  # not wrapped twice
    assert not getattr(first.__wrapped__, idle_scheduler._MARK, False)
    # The counters it reads exist (a missing one would read 0: every step would look idle).
    from ray.data._internal.execution.interfaces.op_runtime_metrics import OpRuntimeMetrics

    assert set(idle_scheduler.PROGRESS) <= {f.name for f in dataclasses.fields(OpRuntimeMetrics)}


def test_the_setup_hook_waits_for_ray_datas_import():
    """A worker process that never runs Ray Data does not import it; one that does gets the paced loop."""
    code = (
        "import sys\n"
        "from raylpclip.runtime.cluster import idle_scheduler as m\n"
        "m.setup_hook()\n"
        "print(m.EXECUTOR in sys.modules)\n"
        "import ray.data\n"
        "from ray.data._internal.execution.streaming_executor import StreamingExecutor as S\n"
        "print(getattr(S._scheduling_loop_step, m._MARK, False))\n"
        "print(sum(type(f).__name__ == '_InstallOnImport' for f in sys.meta_path))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True", "0"]
