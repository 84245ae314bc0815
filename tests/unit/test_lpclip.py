"""LP-CLIP core (methods.md section 2): pseudo-labels, zero-shot init, no label leakage, self-training gain,
determinism. Small synthetic features only: CPU, no Ray, a few seconds in all."""

import inspect
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from raylpclip.config import ConfigError
from raylpclip.methods.lpclip import (LinearProbe, pseudo_labels, self_train, student_logits, supervised_probe,
                                      train_probe, zeroshot_logits)
from raylpclip.methods.lpclip_config import LPCLIPConfig, check_config


def _problem(seed: int = 1, n: int = 800, dim: int = 16, classes: int = 4, lean: float = 0.7):
    """Separable clusters around orthonormal class means; zero-shot weights W_c lean towards the
    previous class's mean (a systematic text-side error, plus noise), so the teacher mislabels the
    edge of every cluster that faces its neighbour while each cluster stays majority-correct.
    Weak views: features + small noise; strong views: features + larger noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.eye(classes, dim)
    labels = torch.randint(0, classes, (n,), generator=g)
    h = means[labels] + 0.5 * torch.randn(n, dim, generator=g) / dim**0.5
    weak = h + 0.05 * torch.randn(n, dim, generator=g) / dim**0.5
    strong = h + 0.3 * torch.randn(n, dim, generator=g) / dim**0.5
    noise = 0.3 * torch.randn(classes, dim, generator=g) / dim**0.5
    weights = F.normalize(means + lean * means.roll(1, dims=0) + noise, dim=1)
    return weak, strong, weights, labels


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


# --- pseudo-labels -------------------------------------------------------------------------------

def test_pseudo_labels_by_hand():
    # Row 0: logits (ln 8, 0, 0) -> p = (0.8, 0.1, 0.1). Row 1: (0, ln 3, ln 3 + ln 2) -> (0.1, 0.3, 0.6).
    # Row 2: all equal -> (1/3, 1/3, 1/3), argmax 0 (first). Threshold 0.5 keeps rows 0 and 1.
    ln = torch.log
    logits = torch.stack([
        torch.tensor([ln(torch.tensor(8.0)), 0.0, 0.0]),
        torch.tensor([0.0, ln(torch.tensor(3.0)), ln(torch.tensor(6.0))]),
        torch.zeros(3),
    ])
    expected_p = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]])

    hard, mask = pseudo_labels(logits, LPCLIPConfig(labels="hard", confidence_threshold=0.5))
    assert hard.dtype == torch.long and hard.tolist() == [0, 2, 0]
    assert mask.tolist() == [True, True, False]

    soft, mask = pseudo_labels(logits, LPCLIPConfig(labels="soft", confidence_threshold=0.5))
    torch.testing.assert_close(soft, expected_p)
    assert mask.tolist() == [True, True, False]

    # Threshold 0 (the default) keeps everything; the threshold is inclusive (0.8 >= 0.8).
    assert pseudo_labels(logits, LPCLIPConfig())[1].all()
    assert pseudo_labels(logits, LPCLIPConfig(confidence_threshold=0.8))[1].tolist() == [True, False, False]
    # The zero-shot round is unfiltered unless threshold_zeroshot: apply_threshold=False keeps all.
    assert pseudo_labels(logits, LPCLIPConfig(confidence_threshold=0.9), apply_threshold=False)[1].all()


def test_pseudo_labels_have_no_gradient_path_to_the_teacher():
    logits = torch.randn(5, 3, requires_grad=True)
    soft, _ = pseudo_labels(logits, LPCLIPConfig(labels="soft"))
    assert not soft.requires_grad


# --- zero-shot init -------------------------------------------------------------------------------

def test_probe_from_zeroshot_reproduces_zeroshot_logits_before_training():
    g = torch.Generator().manual_seed(0)
    raw = 3.0 * torch.randn(64, 32, generator=g)  # not unit-norm: the probe normalises like the teacher
    weights = F.normalize(torch.randn(10, 32, generator=g), dim=1)
    probe = LinearProbe.from_zeroshot(weights, logit_scale=100.0)

    assert torch.equal(probe.bias, torch.zeros(10))
    with torch.no_grad():
        out = probe(raw)
    # Bit-identical to the teacher the self-training loop uses ...
    assert torch.equal(out, zeroshot_logits(raw, weights, logit_scale=100.0))
    # ... and equal to the textbook formula s * (h / |h|) . W^T up to float32 rounding.
    textbook = 100.0 * (raw / raw.norm(dim=1, keepdim=True)) @ weights.T
    torch.testing.assert_close(out, textbook, rtol=1e-5, atol=1e-4)
    assert torch.equal(out.argmax(1), textbook.argmax(1))


def test_student_logits_use_the_temperature_only_for_soft_labels():
    weights = F.normalize(torch.randn(3, 8), dim=1)
    feats = torch.randn(4, 8)
    probe = LinearProbe.from_zeroshot(weights, logit_scale=10.0)
    base = zeroshot_logits(feats, weights, logit_scale=10.0)
    assert torch.equal(student_logits(probe, feats, LPCLIPConfig(labels="hard", temperature=2.0)), base)
    torch.testing.assert_close(student_logits(probe, feats, LPCLIPConfig(labels="soft", temperature=2.0)), base / 2)


# --- no true labels -------------------------------------------------------------------------------

class _TouchedLabels(AssertionError):
    pass


class _PoisonedLabels(torch.Tensor):
    """A labels tensor that raises on any torch operation (indexing, comparison, conversion, ...)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise _TouchedLabels(f"true labels were read via {getattr(func, '__name__', func)}")


class _LabelledFeatures(torch.Tensor):
    """Features that carry their true labels along, as a parquet table with a label column would:
    self-training gets the labels within reach, and reading them raises."""

    @property
    def labels(self):
        raise _TouchedLabels("self_train reached for the labels attached to the features")


def test_pseudo_labelling_functions_take_no_labels():
    for fn in (pseudo_labels, self_train, train_probe, zeroshot_logits, student_logits):
        names = list(inspect.signature(fn).parameters)
        assert not [n for n in names if re.search(r"label|^y$|truth|gold", n)], (fn.__name__, names)
    # The labelled reference is the one function that takes them, by design.
    assert "labels" in inspect.signature(supervised_probe).parameters


def test_self_train_never_reads_true_labels():
    weak, strong, weights, labels = _problem()
    poisoned = labels.as_subclass(_PoisonedLabels)
    with pytest.raises(_TouchedLabels):  # the trap is live: any read of it raises
        _ = poisoned == 0
    weak_l = weak.as_subclass(_LabelledFeatures)
    strong_l = strong.as_subclass(_LabelledFeatures)
    with pytest.raises(_TouchedLabels):
        _ = weak_l.labels

    cfg = LPCLIPConfig(epochs=2, rounds=2, confidence_threshold=0.5)
    results = self_train(weak_l, strong_l, weights, cfg)  # raises if anything reaches for labels
    assert [r.round for r in results] == [1, 2]

    # Same result as on plain tensors: the trap changed nothing, and labels never entered the computation.
    plain = self_train(weak, strong, weights, cfg)
    for a, b in zip(results, plain):
        assert torch.equal(a.targets, b.targets) and torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.probe.weight, b.probe.weight, rtol=0, atol=0)
    del poisoned


# --- self-training on a synthetic problem --------------------------------------------------------

@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_lpclip_beats_zeroshot_and_round_two_is_no_worse(labels):
    weak, strong, weights, y = _problem(seed=1)
    zeroshot_acc = _accuracy(zeroshot_logits(weak, weights, logit_scale=100.0), y)
    assert 0.8 < zeroshot_acc < 0.92  # a noisy teacher with room to improve

    # A zero-init probe learns the clusters from the teacher's mostly-right labels.
    cfg = LPCLIPConfig(labels=labels, init_from_zeroshot=False, rounds=2)
    results = self_train(weak, strong, weights, cfg)
    acc = [_accuracy(student_logits(r.probe, weak, cfg), y) for r in results]
    assert acc[0] > zeroshot_acc + 0.05, (zeroshot_acc, acc)
    assert acc[1] >= acc[0] - 1e-9, (zeroshot_acc, acc)

    # From the zero-shot init (the default) the probe starts at the teacher; training must not lose to it.
    cfg = LPCLIPConfig(labels=labels, rounds=2)
    acc = [_accuracy(student_logits(r.probe, weak, cfg), y) for r in self_train(weak, strong, weights, cfg)]
    assert acc[0] >= zeroshot_acc and acc[1] >= acc[0] - 0.005, (zeroshot_acc, acc)


def test_confidence_threshold_filters_the_relabelling_round():
    weak, strong, weights, _ = _problem()
    results = self_train(weak, strong, weights, LPCLIPConfig(rounds=2, epochs=2, confidence_threshold=0.999))
    assert results[0].coverage == 1.0  # zero-shot round unfiltered (methods.md: "round k: ... optionally")
    assert results[1].coverage < 1.0
    first = self_train(weak, strong, weights,
                       LPCLIPConfig(rounds=1, epochs=2, confidence_threshold=0.999, threshold_zeroshot=True))
    assert first[0].coverage < 1.0


def test_supervised_probe_is_an_upper_reference():
    weak, _, weights, y = _problem(seed=1)
    probe = supervised_probe(weak, y, LPCLIPConfig(init_from_zeroshot=False))
    assert _accuracy(probe(weak).detach(), y) > 0.98
    assert _accuracy(zeroshot_logits(weak, weights, logit_scale=100.0), y) < 0.92


# --- determinism, config ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_self_train_is_deterministic_given_a_seed(optimizer):
    weak, strong, weights, _ = _problem()
    cfg = LPCLIPConfig(optimizer=optimizer, epochs=2, batch_size=64, seed=7)
    a, b = self_train(weak, strong, weights, cfg), self_train(weak, strong, weights, cfg)
    for ra, rb in zip(a, b):
        assert torch.equal(ra.probe.weight, rb.probe.weight) and torch.equal(ra.probe.bias, rb.probe.bias)
        assert torch.equal(ra.targets, rb.targets)
    other = self_train(weak, strong, weights, LPCLIPConfig(optimizer=optimizer, epochs=2, batch_size=64, seed=8))
    assert not torch.equal(a[0].probe.weight, other[0].probe.weight)  # the seed does drive the shuffling


def test_train_probe_rejects_an_empty_mask_and_bad_shapes():
    weak, strong, weights, _ = _problem()
    targets, _ = pseudo_labels(zeroshot_logits(weak, weights, logit_scale=100.0), LPCLIPConfig())
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="confidence_threshold"):
        train_probe(strong, targets, torch.zeros(len(targets), dtype=torch.bool), weights, LPCLIPConfig(), g)
    with pytest.raises(ValueError, match="soft targets"):
        train_probe(strong, targets, torch.ones(len(targets), dtype=torch.bool), weights, LPCLIPConfig(labels="soft"), g)


@pytest.mark.parametrize("override, key", [
    (dict(labels="fuzzy"), "labels"), (dict(confidence_threshold=1.5), "confidence_threshold"),
    (dict(rounds=0), "rounds"), (dict(temperature=0.0), "temperature"), (dict(optimizer="lbfgs"), "optimizer"),
    (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"), (dict(batch_size=0), "batch_size"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"lpclip.{key}"):
        check_config(LPCLIPConfig(**override))


def test_lpclip_imports_without_ray():
    code = "import sys, raylpclip.methods.lpclip; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
