"""Tokenizers: a byte-level BPE trained on our captions, OpenAI's CLIP BPE rebuilt offline, and
fixed-length tokenisation that always keeps the EOS token (the text tower pools there)."""

from __future__ import annotations

import gzip
import json
import os
from typing import Iterable, Sequence

import numpy as np
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


def clip_tokenizer_from_bpe(bpe_path: str, out_dir: str) -> CLIPTokenizer:
    """OpenAI's CLIP tokenizer (49408 tokens) rebuilt offline from `bpe_simple_vocab_16e6.txt.gz`.

    Reproduces openai/CLIP's simple_tokenizer: vocab = the 256 byte chars, the same with '</w>', one
    token per merge, then <|startoftext|> (49406) and <|endoftext|> (49407). Writes vocab.json and
    merges.txt into `out_dir`, loads them as a transformers CLIPTokenizer and saves it there.
    """
    if not os.path.isfile(bpe_path):
        raise FileNotFoundError(f"no CLIP BPE merges file at {bpe_path!r}")
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : _CLIP_NUM_MERGES + 1]  # line 0 is a version header
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


def tokenize_on_one_thread() -> None:
    """For a process that reserves one CPU, such as a Ray Data decode actor: HF fast tokenizers batch-encode
    on a thread per core of the machine (at 2 cores ~1.5 cores busy per call, the second one taken from
    the trainer). The variable is read at each call, so setting it at actor start is in time; a value
    the user set wins."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tokenize(tokenizer, texts: Sequence[str], *, context_length: int) -> dict[str, np.ndarray]:
    """Texts -> {"input_ids", "attention_mask"}: int64 (B, context_length), right-padded.

    Long texts are truncated; the last kept token is forced to EOS when the tokenizer's truncation
    dropped it, because the text tower pools at the first EOS and a row without one pools garbage.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("tokenizer has no eos_token; the CLIP text tower pools at EOS")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    encoded = _encode(tokenizer, list(texts), context_length)
    input_ids = np.full((len(encoded), context_length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(encoded), context_length), dtype=np.int64)
    for row, ids in enumerate(encoded):
        ids = list(ids[:context_length])
        if eos_id not in ids:
            if len(ids) < context_length:
                ids.append(eos_id)
            else:
                ids[-1] = eos_id
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of `texts`, truncated to `max_length` as `tokenizer(texts, truncation=True,
    max_length=...)` truncates them. A fast tokenizer's Rust backend is called directly, with the
    truncation that call would set: the same ids without building the per-text Python dicts (attention
    masks, type ids) that the call returns and `tokenize` never reads: `tokenize` of 256 captions takes
    ~22% less CPU (25.0 -> 19.2 us a caption on the bench's BPE, 27.9 -> 22.1 on CLIP's), which the
    decode actors pay for every sample."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    truncation = {"max_length": max_length, "stride": 0, "strategy": "longest_first",
                  "direction": getattr(tokenizer, "truncation_side", "right")}
    if backend.truncation != truncation:
        backend.enable_truncation(**truncation)
    if backend.padding is not None:
        backend.no_padding()
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=True)]
