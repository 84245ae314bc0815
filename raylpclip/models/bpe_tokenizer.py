"""Tokenizers: a byte-level BPE trained on our captions, and OpenAI's CLIP BPE rebuilt offline.
Fixed-length tokenisation (which always keeps the EOS token) is in data/tokenization.py."""

from __future__ import annotations

import gzip
import json
import os
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerFast

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Order fixes the ids: bos 0, eos 1, pad 2. EOS must not be 2: transformers' CLIP text tower treats
# eos_token_id == 2 as a legacy config and pools at argmax(input_ids) instead of at the EOS.
SPECIAL_TOKENS = [BOS, EOS, PAD]

# OpenAI CLIP's merges file holds more lines than its vocab uses: 49152 - 256 - 2 merges are kept.
_CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 2 * 256 + _CLIP_NUM_MERGES + 2  # 49408: bytes, bytes + '</w>', merges, start/end of text


def train_tokenizer(captions: Iterable[str], *, vocab_size: int, out_dir: str) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `captions` and save it to `out_dir` (reload with `load_tokenizer`).

    Normalisation as CLIP: NFC, whitespace runs collapsed to one space, stripped, lowercased. Every
    word gets a leading-space marker, so "cat" encodes the same at the start of a caption as inside it
    (what zero-shot prompts like "a photo of a {}." rely on). Encodings are wrapped in bos ... eos.
    """
    min_size = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be >= {min_size} (256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    # The prefix space is an encoding artefact: strip it from the decoded text.
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
        special_tokens=[(BOS, bos_id), (EOS, eos_id)],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: str):
    """A tokenizer from a local directory: one from `train_tokenizer` or a standard HF CLIP tokenizer."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no tokenizer directory at {path!r}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _bytes_to_unicode() -> dict[int, str]:
    """openai/CLIP's byte -> printable unicode char table (same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_tokenizer_from_bpe(bpe_path: str, out_dir: str, *, vocab_size: int = CLIP_VOCAB_SIZE) -> CLIPTokenizer:
    """OpenAI's CLIP tokenizer (49408 tokens) rebuilt offline from `bpe_simple_vocab_16e6.txt.gz`.

    Reproduces openai/CLIP's simple_tokenizer: vocab = the 256 byte chars, the same with '</w>', one
    token per merge, then <|startoftext|> (49406) and <|endoftext|> (49407). Writes vocab.json and
    merges.txt into `out_dir`, loads them as a transformers CLIPTokenizer and saves it there.
    A smaller `vocab_size` keeps only the first merges, so that start/end of text are still the two
    largest ids (what a small open_clip model's argmax pooling expects of its vocabulary).
    """
    num_merges = vocab_size - 2 * 256 - 2
    if not 0 <= num_merges <= _CLIP_NUM_MERGES:
        raise ValueError(f"a CLIP BPE vocabulary holds {2 * 256 + 2} to {CLIP_VOCAB_SIZE} tokens, got {vocab_size}")
    if not os.path.isfile(bpe_path):
        raise FileNotFoundError(f"no CLIP BPE merges file at {bpe_path!r}")
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : num_merges + 1]  # line 0 is a version header
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [BOS, EOS]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(out_dir, local_files_only=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
