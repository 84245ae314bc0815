"""SigLIP's gathered and ring forms on three gloo workers against one process on the same global batch.

Three workers, not two: with two, a rank's left and right neighbours are the same process, so a ring that
passed chunks the wrong way round, or credited a chunk to the wrong owner, would still pass. The claims, as
for CLIP's gathered loss (test_distributed.py): the mean of the per-rank losses is the single-process loss,
and the backward (scaled by 1/world_size, as DDP's gradient average does) gives each rank the
single-process gradient of its own features; the replicated scale and bias get the same gradient summed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from raylpclip import distributed as rd
from raylpclip.losses import psd_siglip_loss, siglip_loss
from tests.unit.rank_spawning import spawn_ranks

WORLD_SIZE, N, D = 3, 12, 5
CASES = ("siglip", "psd", "psd_teacher")


def _global_batch() -> dict[str, torch.Tensor]:
    """L2-normalised (N, D) student and teacher features, float64."""
    g = torch.Generator().manual_seed(4321)
    norm = torch.nn.functional.normalize
    return {name: norm(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1) for name in ("u", "v", "tu", "tv")}


def _loss_fn(case: str, impl: str, batch: dict[str, torch.Tensor], rows: slice):
    """The loss of (u, v, s, b); soft targets on every row (subset 1.0), so no draw differs between runs."""
    tu, tv = batch["tu"][rows], batch["tv"][rows]
    if case == "siglip":
        return lambda u, v, s, b: siglip_loss(u, v, s, b, dist_impl=impl)["contrastive_loss"]
    if case == "psd":
        return lambda u, v, s, b: psd_siglip_loss(u, v, s, b, alpha=0.5, subset_fraction=1.0,
                                                  dist_impl=impl)["contrastive_loss"]
    return lambda u, v, s, b: psd_siglip_loss(
        u, v, s, b, alpha=0.7, subset_fraction=1.0, dist_impl=impl, teacher_image_features=tu,
        teacher_text_features=tv, teacher_temperature=0.2)["contrastive_loss"]


def _loss_and_grads(fn, u: torch.Tensor, v: torch.Tensor, *, grad_scale: float) -> dict[str, torch.Tensor]:
    u, v = u.clone().requires_grad_(), v.clone().requires_grad_()
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    loss = fn(u, v, s, b)
    loss.backward()
    return {"loss": loss.detach(), "u": u.grad * grad_scale, "v": v.grad * grad_scale,
            "s": s.grad * grad_scale, "b": b.grad * grad_scale}


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
        # Which rank's rows each hop of the ring brings, checked against the data itself.
        out: dict = {"ring": [(owner, chunk.detach()) for owner, chunk in rd.ring_pass_with_grad(v)]}
        # 1/world_size mirrors DDP, which averages the gradients that the gather/ring backward summed.
        out["cases"] = {(case, impl): _loss_and_grads(_loss_fn(case, impl, batch, rows), u, v,
                                                      grad_scale=1.0 / world_size)
                        for case in CASES for impl in ("gather", "ring")}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD_SIZE, tmp_path_factory.mktemp("siglip_dist"), leading=(WORLD_SIZE,))


def test_the_ring_brings_every_ranks_chunk_once_own_first(workers):
    v, b = _global_batch()["v"], N // WORLD_SIZE
    for rank, out in enumerate(workers):
        owners = [owner for owner, _ in out["ring"]]
        assert owners == [(rank - hop) % WORLD_SIZE for hop in range(WORLD_SIZE)]
        for owner, chunk in out["ring"]:
            torch.testing.assert_close(chunk, v[owner * b:(owner + 1) * b], atol=0, rtol=0)


@pytest.mark.parametrize("impl", ["gather", "ring"])
@pytest.mark.parametrize("case", CASES)
def test_workers_match_one_process(workers, case, impl):
    batch = _global_batch()
    single = _loss_and_grads(_loss_fn(case, "gather", batch, slice(0, N)), batch["u"], batch["v"], grad_scale=1.0)
    per_rank = [out["cases"][(case, impl)] for out in workers]

    # (a) the mean of the per-rank losses (each divided by its own b images) is the global batch's loss.
    mean_loss = torch.stack([r["loss"] for r in per_rank]).mean()
    torch.testing.assert_close(mean_loss, single["loss"], atol=1e-12, rtol=0)
    # (b) each rank's feature gradients are the single-process gradients of its rows.
    b = N // WORLD_SIZE
    for rank, r in enumerate(per_rank):
        rows = slice(rank * b, (rank + 1) * b)
        torch.testing.assert_close(r["u"], single["u"][rows], atol=1e-12, rtol=0)
        torch.testing.assert_close(r["v"], single["v"][rows], atol=1e-12, rtol=0)
    # (c) the replicated scale and bias: DDP's average of the per-rank gradients is the single one.
    for name in ("s", "b"):
        total = torch.stack([r[name] for r in per_rank]).sum()  # each already scaled by 1/world_size
        torch.testing.assert_close(total, single[name], atol=1e-12, rtol=0)
