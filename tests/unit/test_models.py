"""CLIP construction, the feature tower's dict contract, EOS pooling, export and reload."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import CLIPModel

from raylpclip.data.tokenization import tokenize
from raylpclip.models.bpe_tokenizer import load_tokenizer, train_tokenizer
from raylpclip.models.clip import CLIP_MEAN, CLIP_STD, ClipTower, build_clip, export_clip, load_clip, normalize_images

SPECIAL = dict(vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=3)
SMALL = {"vision.image_size": 32, "vision.num_hidden_layers": 1, "text.num_hidden_layers": 1}


def _tower(**overrides) -> ClipTower:
    torch.manual_seed(0)
    return ClipTower(build_clip("tiny", **SPECIAL, overrides={**SMALL, **overrides})).eval()


def _text_batch(batch: int = 3, length: int = 12, eos_at: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 300, (batch, length))
    ids[:, 0] = 0
    ids[:, eos_at] = 1
    ids[:, eos_at + 1 :] = 3
    mask = torch.zeros_like(ids)
    mask[:, : eos_at + 1] = 1
    return ids, mask


def test_tiny_forward_shapes_and_unit_norm():
    torch.manual_seed(0)
    tower = ClipTower(build_clip("tiny", **SPECIAL))
    assert tower.clip.config.vision_config.image_size == 64
    ids, mask = _text_batch(batch=4, length=32)
    out = tower(torch.randn(4, 3, 64, 64), ids, mask)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert out["image_features"].shape == (4, 128)
    assert out["text_features"].shape == (4, 128)
    assert out["logit_scale"].shape == ()
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(4))
    # CLIP's init: t = ln(1 / 0.07)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-3)


def test_encode_without_normalize_matches_normalized_direction():
    tower = _tower()
    image = torch.randn(2, 3, 32, 32)
    raw = tower.encode_image(image, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(raw / raw.norm(dim=-1, keepdim=True), tower.encode_image(image))


def test_logit_scale_clamped_at_100_with_gradient_below():
    tower = _tower()
    with torch.no_grad():
        tower.clip.logit_scale.fill_(math.log(100.0) + 1.0)
    ids, mask = _text_batch()
    assert tower(torch.randn(3, 3, 32, 32), ids, mask)["logit_scale"].item() == pytest.approx(100.0)
    with torch.no_grad():
        tower.clip.logit_scale.fill_(math.log(50.0))
    scale = tower.logit_scale()
    assert scale.item() == pytest.approx(50.0, rel=1e-5)
    scale.backward()
    assert tower.clip.logit_scale.grad.item() == pytest.approx(50.0, rel=1e-5)


def test_overrides_apply():
    model = build_clip("tiny", **SPECIAL, overrides={"vision.image_size": 32, "text.num_hidden_layers": 2,
                                                     "projection_dim": 64})
    assert model.config.vision_config.image_size == 32
    assert len(model.text_model.encoder.layers) == 2
    assert model.visual_projection.out_features == 64 and model.text_projection.out_features == 64
    assert model.config.text_config.eos_token_id == 1 and model.config.text_config.vocab_size == 300


@pytest.mark.parametrize("key", ["vision.not_a_field", "text.imagesize", "projection_dims", "audio.hidden_size"])
def test_unknown_override_key_raises_naming_it(key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_clip("tiny", **SPECIAL, overrides={key: 1})


def test_unknown_preset_names_allowed_ones():
    with pytest.raises(ValueError, match="tiny.*vit-b-32|vit-b-32.*tiny"):
        build_clip("vit-h-14", **SPECIAL)


def test_eos_id_2_refused_because_hf_pools_at_argmax():
    with pytest.raises(ValueError, match="eos_token_id"):
        build_clip("tiny", vocab_size=300, bos_token_id=0, eos_token_id=2, pad_token_id=3)


def test_vit_b_32_preset_shapes():
    with torch.device("meta"):
        model = build_clip("vit-b-32", vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (224, 32, 768, 12)
    assert (vision.num_attention_heads, vision.intermediate_size) == (12, 3072)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (512, 12, 8, 2048)
    assert (text.max_position_embeddings, text.vocab_size, model.config.projection_dim) == (77, 49408, 512)
    # OpenAI's ViT-B/32 has 151.3M parameters (incl. the logit scale).
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(151.28e6, rel=1e-3)


def test_vit_b_16_preset_shapes():
    with torch.device("meta"):
        model = build_clip("vit-b-16", vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (224, 16, 768, 12)
    assert (vision.num_attention_heads, vision.intermediate_size) == (12, 3072)
    assert (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings) == (512, 12, 77)
    # OpenAI's ViT-B/16 has 149.6M parameters: B/32's less the larger patch kernel, plus 147 more positions.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(149.62e6, rel=1e-3)


def test_text_pooling_uses_eos_position():
    tower = _tower()
    ids, mask = _text_batch(eos_at=6)
    base = tower.encode_text(ids, mask)
    after = ids.clone()
    after[:, 8:] = torch.randint(4, 300, (3, 4))  # tokens after EOS (padding positions)
    torch.testing.assert_close(tower.encode_text(after, mask), base)
    before = ids.clone()
    before[:, 3] = (before[:, 3] + 1 - 4) % 296 + 4  # a different real token before EOS
    assert not torch.allclose(tower.encode_text(before, mask), base, atol=1e-4)
    # A largest id after EOS would move HF's legacy argmax pooling; the EOS pooling ignores it.
    big = ids.clone()
    big[:, 9] = 299
    torch.testing.assert_close(tower.encode_text(big, mask), base)


def test_export_reload_same_embeddings_and_tokenizer(tmp_path):
    tok = train_tokenizer(["a photo of a cat", "a dog on the grass", "two birds in a tree"] * 20,
                          vocab_size=280, out_dir=str(tmp_path / "tok"))
    tower = ClipTower(build_clip("tiny", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 overrides=SMALL)).eval()
    export_clip(tower.clip, str(tmp_path / "export"), tokenizer=tok)
    reloaded = ClipTower(CLIPModel.from_pretrained(str(tmp_path / "export"), local_files_only=True)).eval()
    via_loader = ClipTower(load_clip(str(tmp_path / "export"))).eval()
    tok2 = load_tokenizer(str(tmp_path / "export"))
    texts = ["a photo of a dog", "birds on the grass"]
    batch = tokenize(tok, texts, context_length=16)
    batch2 = tokenize(tok2, texts, context_length=16)
    for key in batch:
        assert (batch[key] == batch2[key]).all()
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tower(image, ids, mask)
        for other in (reloaded, via_loader):
            got = other(image, ids, mask)
            for key in expected:
                torch.testing.assert_close(got[key], expected[key])


def test_load_clip_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_clip(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_clip(str(tmp_path / "empty"))


def test_normalize_images():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    out = normalize_images(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    for c in range(3):
        torch.testing.assert_close(out[:, c], (images[:, c].float() / 255 - CLIP_MEAN[c]) / CLIP_STD[c])
    with pytest.raises(TypeError):
        normalize_images(images.float())
