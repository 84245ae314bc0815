import pytest
import torch

from raylpclip.config import OptimConfig, TrainConfig
from raylpclip.engine.loop import LoopState, run_loop


class LinearTask:
    def __init__(self, loss_scale: float = 1.0):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1, bias=False)
        self.after_steps = 0
        self.loss_scale = loss_scale

    def losses(self, batch, *, step):
        err = self.model(batch["x"]) - batch["y"]
        return {"mse_loss": self.loss_scale * (err ** 2).mean(), "step_seen": torch.tensor(float(step))}

    def after_step(self):
        self.after_steps += 1


class Recorder:
    def __init__(self):
        self.calls = []

    def report(self, state, metrics, *, save, evaluate, final):
        self.calls.append((state.step, state.samples_seen, save, evaluate, final, dict(metrics)))


def _data(n_batches, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(size, 3, generator=g), "y": torch.randn(size, 1, generator=g), "key": ["k"] * size}
            for _ in range(n_batches)]


def _run(task, batches, *, steps, batch_size, accum=1, clip=0.0, **train_kw):
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    hooks = Recorder()
    train = TrainConfig(steps=steps, batch_size=batch_size, num_workers=1, **train_kw)
    state = run_loop(task, optimizer=opt, scheduler=sched, batches=iter(batches), state=LoopState(),
                     train=train, optim=OptimConfig(accum_steps=accum, grad_clip=clip), hooks=hooks)
    return state, hooks


def test_accumulation_matches_one_big_batch():
    big = _data(1, 8)
    halves = [{k: v[:4] for k, v in big[0].items()}, {k: v[4:] for k, v in big[0].items()}]
    a, b = LinearTask(), LinearTask()
    _run(a, big, steps=1, batch_size=8)
    _run(b, halves, steps=1, batch_size=8, accum=2)
    torch.testing.assert_close(a.model.weight, b.model.weight)


def test_hooks_fire_on_log_checkpoint_eval_and_final_steps():
    task = LinearTask()
    state, hooks = _run(task, _data(10, 4), steps=10, batch_size=4, log_every=4, checkpoint_every=5, eval_every=3)
    assert state.step == 10 and state.samples_seen == 40 and task.after_steps == 10
    steps = [(c[0], c[2], c[3], c[4]) for c in hooks.calls]
    assert steps == [(3, False, True, False), (4, False, False, False), (5, True, False, False),
                     (6, False, True, False), (8, False, False, False), (9, False, True, False),
                     (10, True, True, True)]
    last = hooks.calls[-1][5]
    assert {"loss", "mse_loss", "samples_per_s", "data_wait_fraction", "lr"} <= set(last)
    assert last["step_seen"] == 9.0  # the window since step 9 holds only the last step (index 9)


def test_resumed_state_continues_to_the_same_final_step():
    task = LinearTask()
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    hooks = Recorder()
    state = run_loop(task, optimizer=opt, scheduler=sched, batches=iter(_data(4, 4)),
                     state=LoopState(step=6, samples_seen=24), train=TrainConfig(steps=10, batch_size=4, num_workers=1),
                     optim=OptimConfig(), hooks=hooks)
    assert state.step == 10 and state.samples_seen == 40 and task.after_steps == 4


def test_stream_that_ends_early_says_at_which_step():
    with pytest.raises(RuntimeError, match="ended at step 2"):
        _run(LinearTask(), _data(2, 4), steps=5, batch_size=4)


def test_non_finite_loss_stops_the_run():
    with pytest.raises(FloatingPointError, match="step 0"):
        _run(LinearTask(loss_scale=float("nan")), _data(2, 4), steps=2, batch_size=4)


def test_grad_clip_bounds_the_update_and_reports_the_norm():
    task = LinearTask(loss_scale=1e4)
    before = task.model.weight.detach().clone()
    _, hooks = _run(task, _data(1, 4), steps=1, batch_size=4, clip=0.5)
    step = (task.model.weight.detach() - before).norm()
    assert step == pytest.approx(0.1 * 0.5, rel=1e-4)  # lr * max_norm
    assert hooks.calls[-1][5]["grad_norm"] > 0.5


class StopAfter(Recorder):
    """Hooks whose stop notice arrives after step `at` (as WorkerHooks.stop_reason answers on every rank)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.asked = at, []

    def stop_reason(self, state):
        self.asked.append(state.step)
        return "SIGTERM" if state.step >= self.at else None


@pytest.mark.parametrize("at, saves", [(7, [5, 7]), (5, [5])])
def test_a_stop_notice_checkpoints_that_step_and_ends_the_loop(at, saves):
    """Stopped after step 7: a checkpoint of step 7 (not an evaluation, not final), then out; a stop right after
    a periodic checkpoint (step 5) writes no second one. Nothing is asked after the final step."""
    task = LinearTask()
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    hooks = StopAfter(at)
    state = run_loop(task, optimizer=opt, scheduler=sched, batches=iter(_data(10, 4)), state=LoopState(),
                     train=TrainConfig(steps=10, batch_size=4, num_workers=1, log_every=4, checkpoint_every=5),
                     optim=OptimConfig(), hooks=hooks)
    assert state.step == at and state.stopped == "SIGTERM" and task.after_steps == at
    assert [c[0] for c in hooks.calls if c[2]] == saves and not any(c[4] for c in hooks.calls)
    assert hooks.calls[-1][0] == at and "loss" in hooks.calls[-1][5]
    assert hooks.asked == list(range(1, at + 1))
    unstopped = StopAfter(99)
    _run_with(LinearTask(), unstopped, steps=3)
    assert unstopped.asked == [1, 2]  # never after the final step


def _run_with(task, hooks, *, steps):
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return run_loop(task, optimizer=opt, scheduler=sched, batches=iter(_data(steps, 4)), state=LoopState(),
                    train=TrainConfig(steps=steps, batch_size=4, num_workers=1), optim=OptimConfig(), hooks=hooks)
