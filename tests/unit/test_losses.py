"""CLIP and PSD losses on one process, against hand and NumPy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raylpclip.losses import clip_loss, psd_alpha, psd_loss
from raylpclip.losses.psd import soft_subset_mask

TIGHT = {"atol": 1e-7, "rtol": 0.0}


def _features(
    n: int = 6, d: int = 5, *, seed: int = 0, noise: float = 0.5, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random L2-normalised (n, d) image and text features; text = image + noise, so pairs correlate."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    v = torch.nn.functional.normalize(u + noise * torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    return u, v


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _np_targets(u, v, s, alpha, mask, *, tu=None, tv=None, tau=None):
    """Soft targets (T_i2t, T_t2i) of methods.md; teacher = (tu, tv) or the student, scale 1/tau or s."""
    tu, tv = (u, v) if tu is None else (tu, tv)
    scale = s if tau is None else 1.0 / tau
    eye = np.eye(len(u))
    zt = scale * tu @ tv.T
    t_i2t = np.where(mask[:, None], (1 - alpha) * eye + alpha * _np_softmax(zt), eye)
    t_t2i = np.where(mask[:, None], (1 - alpha) * eye + alpha * _np_softmax(zt.T), eye)
    return t_i2t, t_t2i


def _np_psd(u, v, s, alpha, mask, **teacher) -> float:
    z = s * u @ v.T
    t_i2t, t_t2i = _np_targets(u, v, s, alpha, mask, **teacher)
    ce = lambda logits, t: float(-(t * _np_log_softmax(logits)).sum(axis=1).mean())  # noqa: E731
    return 0.5 * (ce(z, t_i2t) + ce(z.T, t_t2i))


# ---- clip_loss --------------------------------------------------------------------------------


def test_clip_loss_matches_hand_computation():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    s = torch.tensor(2.0, dtype=torch.float64)
    # Z = s U V^T = [[1.2, 0.0], [1.6, 2.0]]; Z^T = [[1.2, 1.6], [0.0, 2.0]]; targets: the diagonal.
    i2t = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0))) - math.log(
        math.exp(2.0) / (math.exp(1.6) + math.exp(2.0))
    )
    t2i = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6))) - math.log(
        math.exp(2.0) / (math.exp(0.0) + math.exp(2.0))
    )
    expected = 0.5 * (i2t / 2 + t2i / 2)
    out = clip_loss(u, v, s)
    assert set(out) == {"contrastive_loss"}
    assert out["contrastive_loss"].shape == ()
    assert out["contrastive_loss"].item() == pytest.approx(expected, abs=1e-12)


def test_clip_loss_is_symmetric_in_modalities_and_lower_for_aligned_pairs():
    u, v = _features()
    s = torch.tensor(10.0, dtype=torch.float64)
    torch.testing.assert_close(clip_loss(u, v, s)["contrastive_loss"], clip_loss(v, u, s)["contrastive_loss"])
    shuffled = v[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert clip_loss(u, u, s)["contrastive_loss"] < clip_loss(u, shuffled, s)["contrastive_loss"]


# ---- psd_loss reduces to clip_loss ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_psd_with_alpha_zero_equals_clip_exactly(dtype):
    u, v = _features(dtype=dtype)
    s = torch.tensor(14.3, dtype=dtype)
    out = psd_loss(u, v, s, alpha=0.0, subset_fraction=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["contrastive_loss"], clip_loss(u, v, s)["contrastive_loss"], **TIGHT)
    assert out["psd_alpha"].item() == 0.0
    assert out["soft_fraction"].item() == 1.0


def test_psd_with_empty_subset_equals_clip_exactly():
    u, v = _features(dtype=torch.float32)
    s = torch.tensor(14.3)
    out = psd_loss(u, v, s, alpha=0.7, subset_fraction=0.0)
    torch.testing.assert_close(out["contrastive_loss"], clip_loss(u, v, s)["contrastive_loss"], **TIGHT)
    assert out["soft_fraction"].item() == 0.0
    assert out["psd_alpha"].item() == pytest.approx(0.7)


def test_psd_with_positive_alpha_differs_from_clip():
    u, v = _features()
    s = torch.tensor(5.0, dtype=torch.float64)
    psd = psd_loss(u, v, s, alpha=0.5, subset_fraction=1.0)["contrastive_loss"]
    assert abs(psd.item() - clip_loss(u, v, s)["contrastive_loss"].item()) > 1e-3


# ---- psd_loss against NumPy -------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_psd_all_rows_soft_matches_numpy(alpha):
    u, v = _features()
    s = 7.0
    out = psd_loss(u, v, torch.tensor(s, dtype=torch.float64), alpha=alpha, subset_fraction=1.0)
    expected = _np_psd(u.numpy(), v.numpy(), s, alpha, np.ones(len(u), dtype=bool))
    assert out["contrastive_loss"].item() == pytest.approx(expected, abs=1e-12)


def test_psd_partial_subset_matches_numpy_with_the_same_mask():
    u, v = _features(n=8)
    s, alpha = 7.0, 0.6
    out = psd_loss(u, v, torch.tensor(s, dtype=torch.float64), alpha=alpha, subset_fraction=0.5,
                   generator=torch.Generator().manual_seed(3))
    mask = soft_subset_mask(8, 0.5, generator=torch.Generator().manual_seed(3), device="cpu")
    assert 0 < mask.sum() < 8
    expected = _np_psd(u.numpy(), v.numpy(), s, alpha, mask.numpy())
    assert out["contrastive_loss"].item() == pytest.approx(expected, abs=1e-12)
    assert out["soft_fraction"].item() == 0.5
    # A different mask gives a different loss: the subset really selects rows.
    other = _np_psd(u.numpy(), v.numpy(), s, alpha, ~mask.numpy())
    assert abs(other - expected) > 1e-6


def test_psd_with_teacher_features_matches_numpy():
    u, v = _features(seed=0)
    tu, tv = _features(seed=1)
    s, alpha = 9.0, 0.4
    out = psd_loss(u, v, torch.tensor(s, dtype=torch.float64), alpha=alpha, subset_fraction=1.0,
                   teacher_image_features=tu, teacher_text_features=tv)
    mask = np.ones(len(u), dtype=bool)
    expected = _np_psd(u.numpy(), v.numpy(), s, alpha, mask, tu=tu.numpy(), tv=tv.numpy())
    assert out["contrastive_loss"].item() == pytest.approx(expected, abs=1e-12)
    assert abs(expected - _np_psd(u.numpy(), v.numpy(), s, alpha, mask)) > 1e-6


# ---- no gradient through the teacher ----------------------------------------------------------


def test_teacher_features_get_no_gradient():
    u, v = _features()
    tu, tv = (t.clone().requires_grad_() for t in _features(seed=1))
    u, v = u.clone().requires_grad_(), v.clone().requires_grad_()
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    psd_loss(u, v, s, alpha=0.5, subset_fraction=1.0, teacher_image_features=tu,
             teacher_text_features=tv, teacher_temperature=0.1)["contrastive_loss"].backward()
    assert tu.grad is None and tv.grad is None
    assert u.grad is not None and v.grad is not None and s.grad is not None


@pytest.mark.parametrize("tau", [None, 0.2])
def test_default_teacher_gradient_is_ce_against_fixed_targets(tau):
    """dL/dU and dL/dV equal the analytic gradient of CE_soft with the targets held constant."""
    u0, v0 = _features(n=5, d=4)
    s, alpha = 6.0, 0.5
    u, v = u0.clone().requires_grad_(), v0.clone().requires_grad_()
    psd_loss(u, v, torch.tensor(s, dtype=torch.float64), alpha=alpha, subset_fraction=1.0,
             teacher_temperature=tau)["contrastive_loss"].backward()

    un, vn = u0.numpy(), v0.numpy()
    n = len(un)
    t_i2t, t_t2i = _np_targets(un, vn, s, alpha, np.ones(n, dtype=bool), tau=tau)
    z = s * un @ vn.T
    # L = 0.5 * [CE(Z, T1) + CE(Z^T, T2)] with CE the row mean: dL/dZ = 0.5/n * [(softmax(Z) - T1)
    # + (softmax(Z^T) - T2)^T]; Z = s U V^T gives dL/dU = s G V and dL/dV = s G^T U.
    g = 0.5 / n * ((_np_softmax(z) - t_i2t) + (_np_softmax(z.T) - t_t2i).T)
    np.testing.assert_allclose(u.grad.numpy(), s * g @ vn, atol=1e-12, rtol=0)
    np.testing.assert_allclose(v.grad.numpy(), s * g.T @ un, atol=1e-12, rtol=0)


# ---- teacher temperature ----------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0])
def test_teacher_temperature_matches_numpy(tau):
    u, v = _features()
    s, alpha = 8.0, 0.5
    out = psd_loss(u, v, torch.tensor(s, dtype=torch.float64), alpha=alpha, subset_fraction=1.0,
                   teacher_temperature=tau)
    expected = _np_psd(u.numpy(), v.numpy(), s, alpha, np.ones(len(u), dtype=bool), tau=tau)
    assert out["contrastive_loss"].item() == pytest.approx(expected, abs=1e-12)


def test_teacher_temperature_direction():
    """A cold teacher is one-hot on these diagonal-dominant pairs (PSD -> CLIP); a hot one is uniform."""
    u, v = _features(d=8, noise=0.2)
    n = len(u)
    s = torch.tensor(8.0, dtype=torch.float64)
    sims = u @ v.T
    assert bool((sims.argmax(dim=1) == torch.arange(n)).all() and (sims.argmax(dim=0) == torch.arange(n)).all())
    clip = clip_loss(u, v, s)["contrastive_loss"].item()
    losses = [psd_loss(u, v, s, alpha=0.5, subset_fraction=1.0, teacher_temperature=t)["contrastive_loss"].item()
              for t in (1e-4, 0.05, 1.0, 1e8)]
    assert losses[0] == pytest.approx(clip, abs=1e-9)
    # Softer teacher targets move probability off the diagonal, so the loss rises monotonically.
    assert losses[0] < losses[1] < losses[2] < losses[3]
    # tau -> inf: P is uniform, T = (1 - a) I + a / N.
    z = 8.0 * u.numpy() @ v.numpy().T
    t = 0.5 * np.eye(n) + 0.5 / n
    uniform = 0.5 * (-(t * _np_log_softmax(z)).sum(1).mean() - (t * _np_log_softmax(z.T)).sum(1).mean())
    assert losses[3] == pytest.approx(uniform, abs=1e-6)


# ---- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0.5, "subset_fraction": 1.2}, "subset_fraction"),
        ({"alpha": 0.5, "subset_fraction": -0.1}, "subset_fraction"),
        ({"alpha": 0.5, "teacher_temperature": 0.0}, "teacher_temperature"),
        ({"alpha": 0.5, "teacher_temperature": -1.0}, "teacher_temperature"),
    ],
)
def test_psd_loss_validates_arguments(kwargs, name):
    u, v = _features()
    with pytest.raises(ValueError, match=name):
        psd_loss(u, v, torch.tensor(5.0), **kwargs)


def test_psd_loss_needs_both_teacher_features():
    u, v = _features()
    with pytest.raises(ValueError, match="teacher_text_features"):
        psd_loss(u, v, torch.tensor(5.0), alpha=0.5, teacher_image_features=u)


# ---- soft subset ------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "fraction", "k"), [(8, 0.5, 4), (10, 0.25, 2), (7, 1.0, 7), (7, 0.0, 0), (6, 0.34, 2)])
def test_soft_subset_mask_has_exactly_round_fraction_rows(b, fraction, k):
    mask = soft_subset_mask(b, fraction, generator=torch.Generator().manual_seed(0), device="cpu")
    assert mask.dtype == torch.bool and mask.shape == (b,)
    assert int(mask.sum()) == k


def test_soft_subset_mask_is_random_and_reproducible():
    masks = [soft_subset_mask(16, 0.5, generator=torch.Generator().manual_seed(i), device="cpu") for i in range(4)]
    again = soft_subset_mask(16, 0.5, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(masks[0], again)
    assert len({tuple(m.tolist()) for m in masks}) > 1
    g = torch.Generator().manual_seed(0)
    first, second = (soft_subset_mask(16, 0.5, generator=g, device="cpu") for _ in range(2))
    assert not torch.equal(first, second)  # a new subset every step


def test_soft_subset_mask_validates_fraction():
    with pytest.raises(ValueError, match="fraction"):
        soft_subset_mask(4, 1.5, generator=None, device="cpu")


# ---- alpha schedule ---------------------------------------------------------------------------


def test_psd_alpha_linear():
    kw = {"total_steps": 100, "a_max": 0.8, "ramp": "linear"}
    assert psd_alpha(0, **kw) == 0.0
    assert psd_alpha(50, **kw) == pytest.approx(0.4)
    assert psd_alpha(25, **kw) == pytest.approx(0.2)
    assert psd_alpha(100, **kw) == pytest.approx(0.8)
    assert psd_alpha(500, **kw) == pytest.approx(0.8)  # clamped past the end
    assert psd_alpha(-5, **kw) == 0.0  # and before the start


def test_psd_alpha_default_ramp_is_linear():
    assert psd_alpha(30, total_steps=100, a_max=0.5) == pytest.approx(0.15)


def test_psd_alpha_cosine():
    kw = {"total_steps": 100, "a_max": 0.8, "ramp": "cosine"}
    assert psd_alpha(0, **kw) == pytest.approx(0.0, abs=1e-12)
    assert psd_alpha(50, **kw) == pytest.approx(0.4)
    assert psd_alpha(25, **kw) == pytest.approx(0.8 * 0.5 * (1 - math.cos(math.pi / 4)))
    assert psd_alpha(25, **kw) < psd_alpha(25, total_steps=100, a_max=0.8, ramp="linear")  # slow start
    assert psd_alpha(100, **kw) == pytest.approx(0.8)
    assert psd_alpha(1000, **kw) == pytest.approx(0.8)


def test_psd_alpha_constant():
    assert psd_alpha(0, total_steps=100, a_max=0.5, ramp="constant") == 0.5
    assert psd_alpha(99, total_steps=100, a_max=0.5, ramp="constant") == 0.5


def test_psd_alpha_warmup():
    kw = {"total_steps": 110, "a_max": 0.5, "warmup_steps": 10}
    assert psd_alpha(5, **kw) == 0.0
    assert psd_alpha(10, **kw) == 0.0
    assert psd_alpha(60, **kw) == pytest.approx(0.25)
    assert psd_alpha(110, **kw) == pytest.approx(0.5)
    assert psd_alpha(5, ramp="constant", **kw) == 0.0
    assert psd_alpha(10, ramp="constant", **kw) == 0.5


def test_psd_alpha_zero_a_max_is_always_zero():
    ramps = ("linear", "cosine", "constant")
    assert all(psd_alpha(s, total_steps=10, a_max=0.0, ramp=r) == 0.0 for s in range(12) for r in ramps)


def test_psd_alpha_unknown_ramp_raises_naming_ramp():
    with pytest.raises(ValueError, match="ramp"):
        psd_alpha(0, total_steps=10, a_max=0.5, ramp="exponential")


@pytest.mark.parametrize(("kwargs", "name"), [({"total_steps": 0}, "total_steps"), ({"a_max": 1.5}, "a_max"),
                                              ({"warmup_steps": -1}, "warmup_steps")])
def test_psd_alpha_validates_arguments(kwargs, name):
    args = {"total_steps": 10, "a_max": 0.5, **kwargs}
    with pytest.raises(ValueError, match=name):
        psd_alpha(0, **args)
