"""raylpclip.distributed on one process, and the gathered losses on two gloo workers.

The two-worker test checks the claim the whole local-loss design rests on: the mean of the per-rank
losses is the single-process loss on the global batch, and the all-gather backward (scaled by
1/world_size, as DDP's gradient averaging does) gives each rank the single-process gradient of its rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from raylpclip import distributed as rd
from raylpclip.losses import clip_loss, psd_loss
from raylpclip.losses.contrastive import gather_features, local_logits
from tests.unit.rank_spawning import spawn_ranks

WORLD_SIZE, N, D = 2, 8, 4


# ---- one process: everything degrades to identity ---------------------------------------------


def test_helpers_are_identity_when_not_initialised():
    assert not dist.is_initialized()
    assert rd.is_distributed() is False
    assert rd.get_rank() == 0
    assert rd.get_world_size() == 1
    rd.barrier()  # no-op, must not raise

    x = torch.randn(3, 2, requires_grad=True)
    gathered = rd.all_gather_with_grad(x)
    assert torch.equal(gathered, x)
    gathered.sum().backward()  # gradient still flows
    assert torch.equal(x.grad, torch.ones(3, 2))

    y = rd.all_gather_no_grad(x)
    assert torch.equal(y, x) and not y.requires_grad

    for reduce in (rd.all_reduce_mean, rd.all_reduce_sum):
        z = reduce(x)
        assert torch.equal(z, x) and not z.requires_grad
        z.add_(1.0)  # a new tensor: the input is untouched
        assert not torch.equal(z, x)
    assert rd.all_reduce_mean(torch.tensor([3, 4])).tolist() == [3.0, 4.0]


# ---- two gloo workers -------------------------------------------------------------------------


def _global_batch() -> dict[str, torch.Tensor]:
    """A fixed global batch: L2-normalised (N, D) student and teacher features, float64."""
    g = torch.Generator().manual_seed(1234)
    norm = torch.nn.functional.normalize
    return {name: norm(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1) for name in ("u", "v", "tu", "tv")}


def _cases(batch: dict[str, torch.Tensor], rows: slice):
    """name -> loss function of (u, v, s); teacher features are sliced to this rank's rows."""
    tu, tv = batch["tu"][rows], batch["tv"][rows]
    return {
        "clip": lambda u, v, s: clip_loss(u, v, s)["contrastive_loss"],
        "psd": lambda u, v, s: psd_loss(u, v, s, alpha=0.5, subset_fraction=1.0)["contrastive_loss"],
        "psd_teacher": lambda u, v, s: psd_loss(
            u, v, s, alpha=0.5, subset_fraction=1.0, teacher_image_features=tu, teacher_text_features=tv,
            teacher_temperature=0.3,
        )["contrastive_loss"],
    }


def _loss_and_grads(fn, u: torch.Tensor, v: torch.Tensor, *, grad_scale: float) -> dict[str, torch.Tensor]:
    u, v = u.clone().requires_grad_(), v.clone().requires_grad_()
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    loss = fn(u, v, s)
    loss.backward()
    return {"loss": loss.detach(), "u": u.grad * grad_scale, "v": v.grad * grad_scale, "s": s.grad * grad_scale}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        batch = _global_batch()
        b = N // world_size
        rows = slice(rank * b, (rank + 1) * b)
        u, v = batch["u"][rows], batch["v"][rows]
        out: dict = {"rank": rd.get_rank(), "world_size": rd.get_world_size(), "is_distributed": rd.is_distributed()}

        all_u, all_v = gather_features(u, v)
        logits_per_image, logits_per_text = local_logits(u, v, all_u, all_v, 5.0)
        out["gathered_u"] = all_u
        out["logits_shapes"] = (tuple(logits_per_image.shape), tuple(logits_per_text.shape))

        x = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
        out["mean"], out["sum"] = rd.all_reduce_mean(x), rd.all_reduce_sum(x)
        out["x_after"] = x
        out["no_grad"] = rd.all_gather_no_grad(torch.full((1, 2), float(rank), requires_grad=True))
        rd.barrier()

        # 1/world_size mirrors DDP, which averages the gradients that the all-gather backward summed.
        out["cases"] = {name: _loss_and_grads(fn, u, v, grad_scale=1.0 / world_size)
                        for name, fn in _cases(batch, rows).items()}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD_SIZE, tmp_path_factory.mktemp("dist"), leading=(WORLD_SIZE,))


def test_workers_see_the_group_and_reduce(two_workers):
    for rank, out in enumerate(two_workers):
        assert (out["rank"], out["world_size"], out["is_distributed"]) == (rank, WORLD_SIZE, True)
        torch.testing.assert_close(out["mean"], torch.tensor([1.5, 15.0]))
        torch.testing.assert_close(out["sum"], torch.tensor([3.0, 30.0]))
        torch.testing.assert_close(out["x_after"], torch.tensor([float(rank + 1), 10.0 * (rank + 1)]))
        torch.testing.assert_close(out["no_grad"], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        assert not out["no_grad"].requires_grad
        torch.testing.assert_close(out["gathered_u"], _global_batch()["u"], atol=0, rtol=0)


def test_each_rank_computes_only_its_rows_of_the_logits(two_workers):
    b = N // WORLD_SIZE
    for out in two_workers:
        assert out["logits_shapes"] == ((b, N), (b, N))


@pytest.mark.parametrize("case", ["clip", "psd", "psd_teacher"])
def test_two_workers_match_one_process(two_workers, case):
    batch = _global_batch()
    single = _loss_and_grads(_cases(batch, slice(0, N))[case], batch["u"], batch["v"], grad_scale=1.0)
    per_rank = [out["cases"][case] for out in two_workers]

    # (a) the mean of the per-rank losses is the loss on the whole batch.
    mean_loss = torch.stack([r["loss"] for r in per_rank]).mean()
    torch.testing.assert_close(mean_loss, single["loss"], atol=1e-12, rtol=0)
    # (b) each rank's feature gradient is the single-process gradient of its rows.
    b = N // WORLD_SIZE
    for rank, r in enumerate(per_rank):
        rows = slice(rank * b, (rank + 1) * b)
        torch.testing.assert_close(r["u"], single["u"][rows], atol=1e-12, rtol=0)
        torch.testing.assert_close(r["v"], single["v"][rows], atol=1e-12, rtol=0)
    # The replicated logit scale gets no all-gather: DDP's average of the per-rank gradients is exact.
    mean_s_grad = torch.stack([r["s"] for r in per_rank]).sum()  # each already scaled by 1/world_size
    torch.testing.assert_close(mean_s_grad, single["s"], atol=1e-12, rtol=0)
