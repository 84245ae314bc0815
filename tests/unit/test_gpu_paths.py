"""The CUDA paths of the pure-torch core: bf16 autocast, fused AdamW, torch.compile and the gathered loss on
one GPU. Marked `gpu`; each skips with its reason where no CUDA device is present (CI, this machine), and the
GPU check (scripts/gpu_check.sh) runs them with `-m gpu`. Nothing here imports Ray or omegaconf: the check
runs them on machines that have neither (tests/conftest.py imports only the standard library and pytest at
module level)."""

from __future__ import annotations

import pytest
import torch

from raylpclip.bench.preset_step import build_preset, make_optimizer, random_batches, train_step
from raylpclip.losses.contrastive import clip_loss
from raylpclip.models.clip import normalize_images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

BATCH = 16


def _setup(seed: int = 0, *, compile_towers: bool = False):
    torch.manual_seed(seed)
    device = torch.device("cuda")
    tower = build_preset("tiny", device, compile_towers=compile_towers)
    return tower, random_batches(tower, BATCH, device, count=1)[0]


def _loss(tower, batch, precision: str) -> torch.Tensor:
    images, ids, mask = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = tower(normalize_images(images), ids, mask)
        return clip_loss(out["image_features"].float(), out["text_features"].float(),
                         out["logit_scale"].float())["contrastive_loss"]


def test_bf16_autocast_step_is_finite_and_close_to_fp32():
    tower, batch = _setup()
    with torch.no_grad():
        fp32, bf16 = _loss(tower, batch, "fp32"), _loss(tower, batch, "bf16")
    # bf16 keeps 8 bits of mantissa: features differ by ~1e-2 relative, and the loss (log of a softmax over 16
    # logits scaled by s = 1/0.07) by well under 2% at initialisation.
    assert torch.isfinite(bf16) and abs(float(bf16) - float(fp32)) <= 0.02 * abs(float(fp32))
    optimizer = make_optimizer(tower, fused=True)
    before = [p.detach().clone() for p in tower.parameters()]
    losses = [float(train_step(tower, optimizer, batch, precision="bf16")) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    # Every trainable weight moved and stayed finite (the loss itself need not fall in 3 steps at lr 5e-4
    # without warm-up: on CPU it went 2.95, 3.33, 2.93).
    for old, new in zip(before, tower.parameters()):
        assert torch.isfinite(new).all() and not torch.equal(old, new)


def test_fused_adamw_matches_foreach_adamw():
    towers = []
    for fused in (True, False):
        tower, batch = _setup(seed=1)
        optimizer = make_optimizer(tower, fused=fused)
        for _ in range(4):
            train_step(tower, optimizer, batch, precision="fp32")
        towers.append(tower)
    for (name, a), (_, b) in zip(towers[0].named_parameters(), towers[1].named_parameters()):
        # Same update rule, different kernels (fused sums in another order): fp32 round-off over 4 steps.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_towers_give_the_eager_loss():
    eager, batch = _setup(seed=2)
    compiled, _ = _setup(seed=2, compile_towers=True)
    compiled.load_state_dict(eager.state_dict())
    with torch.no_grad():
        a, b = _loss(eager, batch, "fp32"), _loss(compiled, batch, "fp32")
    # Inductor fuses and reorders reductions (and may use TF32-free but differently tiled matmuls).
    assert abs(float(a) - float(b)) <= 1e-3 * abs(float(a))
    loss = _loss(compiled, batch, "bf16")
    loss.backward()  # the compiled backward runs too
    assert all(torch.isfinite(p.grad).all() for p in compiled.parameters() if p.grad is not None)


def test_gathered_loss_on_one_gpu_equals_the_cpu_value():
    torch.manual_seed(3)
    image = torch.nn.functional.normalize(torch.randn(BATCH, 32, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(BATCH, 32, dtype=torch.float64), dim=-1)
    scale = torch.tensor(14.3, dtype=torch.float64)
    cpu = clip_loss(image, text, scale)["contrastive_loss"]
    gpu = clip_loss(image.cuda(), text.cuda(), scale.cuda())["contrastive_loss"]
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)
    cpu32 = clip_loss(image.float(), text.float(), scale.float())["contrastive_loss"]
    gpu32 = clip_loss(image.float().cuda(), text.float().cuda(), scale.float().cuda())["contrastive_loss"]
    torch.testing.assert_close(gpu32.cpu(), cpu32, rtol=1e-5, atol=1e-6)


def test_fsdp_on_one_gpu_over_nccl_trains_like_the_unsharded_tower(tmp_path):
    """FSDP2 on a 1-rank NCCL group (a process of its own, so no group outlives the test): the tiny tower sharded
    per block with the bf16 policy of train.precision=bf16, three fused-AdamW steps, losses within bf16 noise of the
    unsharded tower's under autocast, and weights that stay finite."""
    import torch.multiprocessing as mp

    from tests.unit.rank_spawning import free_port

    mp.spawn(_fsdp_rank, args=(free_port(), str(tmp_path)), nprocs=1, join=True)
    result = torch.load(tmp_path / "fsdp.pt")
    for plain, sharded in zip(result["plain"], result["sharded"]):
        assert abs(plain - sharded) <= 0.03 * abs(plain), result
    assert result["finite"]


def _fsdp_rank(rank: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    from raylpclip.parallel.fsdp_sharding import FsdpSettings, shard_tower

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        losses = {}
        for kind in ("plain", "sharded"):
            tower, batch = _setup(seed=4)
            if kind == "sharded":
                blocks = [*tower.clip.vision_model.encoder.layers, *tower.clip.text_model.encoder.layers]
                tower = shard_tower(tower, blocks, FsdpSettings(device_type="cuda", bf16=True))
            optimizer = make_optimizer(tower, fused=True)
            losses[kind] = [float(train_step(tower, optimizer, batch, precision="bf16")) for _ in range(3)]
            finite = all(torch.isfinite(p.full_tensor() if hasattr(p, "full_tensor") else p).all()
                         for p in tower.parameters())
        torch.save({**losses, "finite": finite}, os.path.join(out_dir, "fsdp.pt"))
    finally:
        dist.destroy_process_group()
