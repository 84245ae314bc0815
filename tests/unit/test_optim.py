import math

import pytest
import torch

from raylpclip.config import OptimConfig
from raylpclip.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_no_decay_groups_hold_biases_norms_embeddings_and_logit_scale():
    model = torch.nn.Module()
    model.proj = torch.nn.Linear(4, 4)
    model.layer_norm = torch.nn.LayerNorm(4)
    model.token_embedding = torch.nn.Embedding(10, 4)
    model.logit_scale = torch.nn.Parameter(torch.tensor(1.0))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 5  # proj.bias, norm weight+bias, embedding, logit_scale


def test_warmup_then_cosine_values():
    f = lambda s: lr_factor(s, total_steps=110, warmup_steps=10, schedule="cosine", min_ratio=0.0)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    g = lambda s: lr_factor(s, total_steps=110, warmup_steps=10, schedule="cosine", min_ratio=0.1)  # noqa: E731
    assert g(110) == pytest.approx(0.1) and g(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(50, total_steps=110, warmup_steps=10, schedule="constant", min_ratio=0) == 1.0


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.1, warmup_steps=2, schedule="cosine")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)
    assert lrs[2] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
