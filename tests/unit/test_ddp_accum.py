"""Gradient sync under accumulation, on two gloo processes with DDP as Ray Train builds it (our
`ddp_kwargs`: bucket size, gradients as bucket views): `run_loop` all-reduces once per optimizer step,
not once per micro-step, and two workers x two micro-steps give the single-process big-batch update."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from raylpclip.config import OptimConfig, TrainConfig
from raylpclip.distributed import ddp_kwargs
from raylpclip.engine.loop import LoopState, run_loop
from tests.unit.rank_spawning import spawn_ranks

WORLD, STEPS, ACCUM, GLOBAL = 2, 3, 2, 8


class Task:
    def __init__(self, model):
        self.model = model

    def losses(self, batch, *, step):
        return {"mse_loss": (self.model(batch["x"]) - batch["y"]).square().mean()}

    def after_step(self):
        pass


class Quiet:
    def report(self, *args, **kwargs):
        pass


def _data(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {"x": torch.randn(GLOBAL, 3, generator=g), "y": torch.randn(GLOBAL, 2, generator=g)}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _train(task, batches, *, batch_size: int, accum: int) -> None:
    opt = torch.optim.SGD(task.model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run_loop(task, optimizer=opt, scheduler=sched, batches=iter(batches), state=LoopState(),
             train=TrainConfig(steps=STEPS, batch_size=batch_size, num_workers=1, log_every=1),
             optim=OptimConfig(accum_steps=accum, grad_clip=0.0), hooks=Quiet())


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = DDP(_model(), **ddp_kwargs(bucket_cap_mb=25.0))
        calls = [0]

        def counting_allreduce(state, bucket):  # DDP's default hook (average), counted
            calls[0] += 1
            buf = bucket.buffer().div_(WORLD)
            return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

        model.register_comm_hook(None, counting_allreduce)
        micro = GLOBAL // (WORLD * ACCUM)
        # Rank r's micro-batches of each step: its half of the global batch, in ACCUM pieces.
        mine = [{k: v[rank * micro * ACCUM:][i * micro:(i + 1) * micro] for k, v in _data(s).items()}
                for s in range(STEPS) for i in range(ACCUM)]
        _train(Task(model), mine, batch_size=GLOBAL, accum=ACCUM)
        torch.save({"calls": calls[0], "weights": [p.detach() for p in model.module.parameters()]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD, tmp_path_factory.mktemp("ddp"))


def test_one_all_reduce_per_optimizer_step(ranks):
    # One bucket holds this model's gradients: without no_sync it would be STEPS * ACCUM calls.
    assert [r["calls"] for r in ranks] == [STEPS, STEPS]


def test_two_workers_accumulating_match_one_big_batch(ranks):
    single = Task(_model())
    _train(single, [_data(s) for s in range(STEPS)], batch_size=GLOBAL, accum=1)
    for r in ranks:
        for got, want in zip(r["weights"], single.model.parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
