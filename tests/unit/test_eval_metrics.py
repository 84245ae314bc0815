"""Classification and retrieval metrics on hand-computed cases; the zero-shot classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raylpclip.data.tokenization import tokenize
from raylpclip.eval.metrics import classification_metrics, retrieval_metrics
from raylpclip.eval.templates import OPENAI_IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
from raylpclip.eval.zeroshot import zeroshot_classifier
from raylpclip.models.bpe_tokenizer import train_tokenizer
from raylpclip.models.clip import ClipTower, build_clip


def test_classification_metrics_hand_case():
    logits = torch.tensor([
        [3.0, 1.0, 0.0],  # label 0, predicted 0
        [2.0, 1.0, 0.0],  # label 0, predicted 0
        [0.0, 2.0, 1.0],  # label 0, predicted 1
        [0.0, 1.0, 2.0],  # label 1, predicted 2
    ])
    labels = torch.tensor([0, 0, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(1.0)  # top min(5, 3) = 3 classes: always a hit
    # recall: class 0 = 2/3, class 1 = 0/1; class 2 is never a label, so it is not averaged in.
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_classification_acc5_counts_the_top_five_only():
    # 7 classes; row 0's label ranks 5th (hit), row 1's label ranks 6th (miss).
    logits = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1]])
    m = classification_metrics(logits, torch.tensor([4, 5]))
    assert m["acc1"] == 0.0
    assert m["acc5"] == pytest.approx(0.5)


def test_retrieval_metrics_hand_case():
    # Identity image features make the text features the (text x image) score matrix.
    images = torch.eye(3)
    texts = torch.tensor([
        [0.9, 0.1, 0.0],  # text 0 of image 0: image 0 ranks 1st
        [0.2, 0.8, 0.1],  # text 1 of image 0: image 0 ranks 2nd
        [0.1, 0.3, 0.7],  # text 2 of image 1: image 1 ranks 2nd
        [0.0, 0.2, 0.6],  # text 3 of image 2: image 2 ranks 1st
    ])
    text_to_image = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(images, texts, text_to_image)
    assert set(m) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)}
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 4)
    # Per image, texts ranked: image 0 -> t0 (its own); image 1 -> t1 (image 0's), t2 (own);
    # image 2 -> t2 (image 1's), t3 (own).
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    for k in (5, 10):  # k above the candidate count: everything is retrieved
        assert m[f"image_retrieval_recall@{k}"] == 1.0 and m[f"text_retrieval_recall@{k}"] == 1.0
    m2 = retrieval_metrics(images, texts, text_to_image, ks=(2,))
    assert m2 == {"image_retrieval_recall@2": 1.0, "text_retrieval_recall@2": 1.0}


def test_retrieval_metrics_any_text_counts_for_text_retrieval():
    images = torch.eye(2)
    texts = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.0, 1.0]])  # t0, t1 of image 0; t2 of image 1
    m = retrieval_metrics(images, texts, torch.tensor([0, 0, 1]), ks=(1,))
    assert m["text_retrieval_recall@1"] == 1.0  # image 0's best text is t1, one of its own
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3)  # t0 retrieves image 1


def test_templates():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 and len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES + SIMPLE_TEMPLATES)
    assert "a photo of a {}." in SIMPLE_TEMPLATES and "itap of a {}." in OPENAI_IMAGENET_TEMPLATES


@pytest.fixture(scope="module")
def tower_and_tokenizer(tmp_path_factory):
    tok = train_tokenizer(["a photo of a cat.", "a sketch of the dog.", "a bird"] * 20, vocab_size=280,
                          out_dir=str(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    clip = build_clip("tiny", vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id,
                      overrides={"vision.image_size": 32, "vision.num_hidden_layers": 1,
                                 "text.num_hidden_layers": 1, "text.attention_dropout": 0.5})
    return ClipTower(clip), tok


def test_zeroshot_classifier_matches_manual_computation(tower_and_tokenizer):
    tower, tok = tower_and_tokenizer
    templates = ["a photo of a {}.", "a sketch of the {}."]
    tower.train()  # attention dropout is on in train mode: the classifier must switch it off
    weights = zeroshot_classifier(tower, tok, ["cat"], templates, context_length=16)
    assert tower.training
    assert weights.shape == (1, 128)
    tower.eval()
    with torch.no_grad():
        batch = tokenize(tok, ["a photo of a cat.", "a sketch of the cat."], context_length=16)
        emb = tower.encode_text(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
        expected = F.normalize(F.normalize(emb, dim=-1).mean(dim=0, keepdim=True), dim=-1)
    torch.testing.assert_close(weights, expected)


def test_zeroshot_classifier_rows_unit_norm_and_batching_invariant(tower_and_tokenizer):
    tower, tok = tower_and_tokenizer
    tower.eval()
    classes = ["cat", "dog", "bird"]
    weights = zeroshot_classifier(tower, tok, classes, SIMPLE_TEMPLATES, context_length=16)
    assert not tower.training
    assert weights.shape == (3, 128)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(3))
    small_batches = zeroshot_classifier(tower, tok, classes, SIMPLE_TEMPLATES, context_length=16, batch_size=2)
    torch.testing.assert_close(small_batches, weights)
    # Classes differ: rows are not all the same vector.
    assert not torch.allclose(weights[0], weights[1])
