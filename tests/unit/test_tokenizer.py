"""Trained BPE round trip, OpenAI's CLIP BPE rebuilt offline, fixed-length tokenisation keeping EOS."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raylpclip.data.tokenization import _encode, text_encoder, tokenize
from raylpclip.models.bpe_tokenizer import clip_tokenizer_from_bpe, load_tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLIP_BPE = DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"

CAPTIONS = [
    "A photo of a cat.", "a dog running on the beach", "Two cats and a DOG", "a red car parked near a tree",
    "a bird   sitting on a branch", "the cat sleeps on the sofa",
] * 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(CAPTIONS, vocab_size=300, out_dir=str(out)), out


def test_train_tokenizer_round_trip(trained):
    tok, out = trained
    assert len(tok) == 300
    # EOS must not be 2 (transformers' CLIP treats eos_token_id == 2 as legacy argmax pooling).
    assert tok.eos_token_id != 2 and len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    ids = tok("A  Photo of a CAT.")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a cat."
    # Lowercase + whitespace normalisation, and the same tokens for a word at the start or inside.
    assert tok("cat")["input_ids"][1:-1] == tok("a cat")["input_ids"][2:-1]
    assert ids == tok("a photo\tof a cat.")["input_ids"]
    reloaded = load_tokenizer(str(out))
    assert reloaded("A  Photo of a CAT.")["input_ids"] == ids
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    # Byte level: unseen characters still encode and decode.
    assert reloaded.decode(reloaded("zebra ünïcode 42")["input_ids"], skip_special_tokens=True) == "zebra ünïcode 42"


def test_train_tokenizer_rejects_tiny_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CAPTIONS, vocab_size=100, out_dir=str(tmp_path))


def test_load_tokenizer_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-tok"):
        load_tokenizer(str(tmp_path / "missing-tok"))


def test_tokenize_pads_and_keeps_eos_under_truncation(trained):
    tok, _ = trained
    long = " ".join(["a dog running on the beach"] * 10)
    out = tokenize(tok, ["a cat", long], context_length=12)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 12) and mask.shape == (2, 12)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    short = tok("a cat")["input_ids"]
    n = len(short)
    assert ids[0, :n].tolist() == short
    assert (ids[0, n:] == tok.pad_token_id).all()
    assert mask[0].tolist() == [1] * n + [0] * (12 - n)
    assert ids[1, 0] == tok.bos_token_id and ids[1, -1] == tok.eos_token_id and mask[1].all()


# Short, empty, messy whitespace and case, accents, an emoji, and one long enough to be truncated.
ODD_TEXTS = ["a cat", "", "  Two   CATS and a dog!! ", "une caf\u00e9 na\u00efve \u00fcber", "a cat \U0001F431 asleep",
             " ".join(["a dog running on the beach"] * 10)]


def _backend_left_dirty(tok) -> None:
    """A call that leaves padding on and another truncation length on the Rust backend."""
    tok(["x"], padding="max_length", max_length=40, truncation=True)
    assert tok.backend_tokenizer.padding is not None


@pytest.mark.parametrize("length", [4, 12, 77])
def test_encode_gives_the_ids_of_the_tokenizers_own_call(trained, length):
    tok, _ = trained
    _backend_left_dirty(tok)
    got = _encode(tok, ODD_TEXTS, length)
    assert got == tok(ODD_TEXTS, truncation=True, max_length=length)["input_ids"]
    assert max(map(len, got)) == length  # the long text was truncated


@pytest.mark.parametrize("length", [4, 12, 77])
def test_text_encoder_tokenizes_as_the_tokenizer_after_pickling(trained, length):
    tok, _ = trained
    encoder = pickle.loads(pickle.dumps(text_encoder(tok)))  # as a decode actor receives it
    want = tokenize(tok, ODD_TEXTS, context_length=length)
    got = tokenize(encoder, ODD_TEXTS, context_length=length)
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    assert got["attention_mask"].tolist() == want["attention_mask"].tolist()


def test_text_encoder_is_a_copy(trained):
    tok, _ = trained
    encoder = text_encoder(tok)
    tokenize(encoder, ["a cat"], context_length=4)  # sets truncation on the encoder's backend only
    assert encoder.backend_tokenizer is not tok.backend_tokenizer
    assert text_encoder(encoder) is encoder


def test_text_encoder_passes_other_tokenizers_through():
    other = _DropsEos()
    assert text_encoder(other) is other and text_encoder(None) is None


class _OldBackend:
    """A tokenizers < 0.21 backend: no `encode_batch_fast`."""

    def to_str(self) -> str:
        raise AssertionError("a backend without encode_batch_fast must not be copied")


def test_text_encoder_keeps_a_tokenizer_whose_backend_lacks_encode_batch_fast():
    old = _DropsEos()
    old.is_fast, old.backend_tokenizer = True, _OldBackend()
    assert text_encoder(old) is old  # shipped as it is, and called as an HF tokenizer:
    assert tokenize(old, ["one two three four five six"], context_length=4)["input_ids"].tolist() == [[0, 13, 13, 1]]


def test_decode_actor_modules_load_the_encoder_without_transformers(trained, tmp_path):
    """What a decode actor imports (its class's module, then its pickled tokenizer) must not pull in
    transformers or torch: that was ~2 s of CPU at every actor start, i.e. at every epoch."""
    tok, _ = trained
    blob = tmp_path / "encoder.pkl"
    blob.write_bytes(pickle.dumps(text_encoder(tok)))
    code = ("import pickle, sys\n"
            "import raylpclip.runtime.data.decode_pool, raylpclip.data.views\n"
            "from raylpclip.data.tokenization import tokenize\n"
            f"encoder = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
            "print(tokenize(encoder, ['a cat'], context_length=8)['input_ids'][0].tolist(),"
            " [m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{tokenize(tok, ['a cat'], context_length=8)['input_ids'][0].tolist()} []"


class _DropsEos:
    """A tokenizer whose truncation cuts the EOS off (as plain `ids[:max_length]` would)."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

    def __call__(self, texts, *, truncation, max_length):
        rows = [[0] + [10 + len(w) for w in t.split()] + [1] for t in texts]
        return {"input_ids": [r[:max_length] for r in rows]}


def test_tokenize_fixes_up_eos_dropped_by_truncation():
    out = tokenize(_DropsEos(), ["one two three four five six", "hi"], context_length=4)
    assert out["input_ids"].tolist() == [[0, 13, 13, 1], [0, 12, 1, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.data
@pytest.mark.skipif(not CLIP_BPE.is_file(), reason="../shared/data/clip is absent")
def test_clip_tokenizer_from_bpe_known_answer(tmp_path):
    tok = clip_tokenizer_from_bpe(str(CLIP_BPE), str(tmp_path))
    assert len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tmp_path / "vocab.json").is_file()
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    reloaded = load_tokenizer(str(tmp_path))
    out = tokenize(reloaded, ["a photo of a cat", "a photo " * 50], context_length=77)
    assert out["input_ids"][0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert out["attention_mask"][0].sum() == 7
    assert out["input_ids"][1, -1] == 49407 and out["attention_mask"][1].all()
    _backend_left_dirty(reloaded)
    for length in (8, 77):
        assert _encode(reloaded, ODD_TEXTS, length) == reloaded(ODD_TEXTS, truncation=True, max_length=length)["input_ids"]
        want = tokenize(reloaded, ODD_TEXTS, context_length=length)["input_ids"]
        assert tokenize(text_encoder(reloaded), ODD_TEXTS, context_length=length)["input_ids"].tolist() == want.tolist()
