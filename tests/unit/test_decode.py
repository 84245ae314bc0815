"""BatchDecoder: the rows Ray Data hands to map_batches in both img2dataset layouts, and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from raylpclip import batch_schema
from raylpclip.data.decode import BatchDecoder, DataError, stable_id
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.models.bpe_tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def samples():
    return list(generate_samples(6, spec=SyntheticSpec(image_size=24), seed=0))


@pytest.fixture(scope="module")
def tokenizer(samples, tmp_path_factory):
    return train_tokenizer([s.caption for s in samples] * 5, vocab_size=300, out_dir=str(tmp_path_factory.mktemp("tok")))


def _decoder(tokenizer, **kw):
    return BatchDecoder(tokenizer=tokenizer, image_size=16, context_length=12, train=False, **kw)


def _wds_batch(samples, metas=None):
    """Rows as read_webdataset(decoder=None) gives them: bytes members, plus the shard URL."""
    metas = metas or [s.meta for s in samples]
    return {
        "__key__": np.array([f"{i:09d}" for i in range(len(samples))], dtype=object),
        "jpg": np.array([s.jpg for s in samples], dtype=object),
        "txt": np.array([s.caption.encode() for s in samples], dtype=object),
        "json": np.array([json.dumps(m).encode() for m in metas], dtype=object),
        "__url__": np.array(["/data/00003.tar"] * len(samples), dtype=object),
    }


def test_webdataset_rows_decode_to_training_columns(samples, tokenizer):
    out = _decoder(tokenizer)(_wds_batch(samples))
    assert out[batch_schema.IMAGE].shape == (6, 3, 16, 16) and out[batch_schema.IMAGE].dtype == np.uint8
    assert out[batch_schema.INPUT_IDS].shape == out[batch_schema.ATTENTION_MASK].shape == (6, 12)
    assert out[batch_schema.LABEL].tolist() == [s.meta["label"] for s in samples]
    assert len(set(out[batch_schema.IMAGE_ID].tolist())) == 6  # no image_id: every row its own image


def test_rows_of_one_image_share_image_id(samples, tokenizer):
    metas = [{"image_id": "a.jpg"}, {"image_id": "a.jpg"}, {"image_id": "b.jpg"}]
    out = _decoder(tokenizer)(_wds_batch(samples[:3], metas))
    ids = out[batch_schema.IMAGE_ID].tolist()
    assert ids[0] == ids[1] == stable_id("a.jpg") != ids[2]
    assert out[batch_schema.LABEL].tolist() == [-1, -1, -1]


def test_corrupt_image_and_missing_caption_are_skipped_and_counted(samples, tokenizer):
    batch = _wds_batch(samples)
    batch["jpg"][1] = b"\xff\xd8 not really a jpeg"
    batch["jpg"][2] = b""
    batch["txt"][4] = b"   "
    batch["txt"][5] = float("nan")  # how a webdataset sample without a .txt member arrives
    batch["jpg"][0] = float("nan")  # ... and one without a .jpg
    decoder = _decoder(tokenizer, with_keys=True)
    out = decoder(batch)
    assert out[batch_schema.KEY].tolist() == ["000000003"]
    assert dict(decoder.skipped) == {"bad_image": 3, "no_caption": 2}


def test_kept_rows_hold_their_own_images_around_skipped_ones(samples, tokenizer):
    """Images are written into the batch array as they decode; a skipped sample's row is reused."""
    from raylpclip.data.transforms import decode_image, eval_transform

    batch = _wds_batch(samples)
    batch["jpg"][1] = b"\xff\xd8 not really a jpeg"  # decodes to nothing: row 1 goes to sample 2
    batch["txt"][3] = b""  # decodes, then skipped for its caption: its row is overwritten by sample 4
    out = _decoder(tokenizer, with_keys=True)(batch)
    assert out[batch_schema.KEY].tolist() == ["000000000", "000000002", "000000004", "000000005"]
    want = np.stack([eval_transform(decode_image(samples[i].jpg), size=16) for i in (0, 2, 4, 5)])
    assert np.array_equal(out[batch_schema.IMAGE], want)


def test_parquet_rows_with_null_image_skip(samples, tokenizer):
    batch = {
        "key": np.array(["0", "1", "2"], dtype=object),
        "jpg": np.array([samples[0].jpg, None, samples[2].jpg], dtype=object),
        "txt": np.array([s.caption for s in samples[:3]], dtype=object),
        "label": np.array([3, 4, 5]),
        "path": np.array(["s3://b/00000.parquet"] * 3, dtype=object),
    }
    decoder = _decoder(tokenizer)
    out = decoder(batch)
    assert out[batch_schema.LABEL].tolist() == [3, 5] and decoder.skipped == {"bad_image": 1}


def test_wrong_member_names_are_bad_samples_and_the_stop_names_the_keys_found(samples, tokenizer):
    batch = _wds_batch(samples)
    batch["input.jpg"] = batch.pop("jpg")
    decoder = _decoder(tokenizer, fail_after_bad=12)
    assert decoder(batch)[batch_schema.IMAGE].shape[0] == 0  # one shard of another layout costs its samples
    assert decoder.skipped == {"bad_image": 6}
    with pytest.raises(DataError, match=r"'bad_image': 12\}; shards /data/00003\.tar have keys "
                                        r"\[__key__, __url__, input\.jpg, json, txt\]"):
        decoder(batch)  # ... but a run of them stops, saying why


def test_each_row_takes_its_image_and_caption_from_the_column_it_has(samples, tokenizer):
    """A shard cut after a sample's image gives a batch without a `txt` column; a sample whose image is a
    `.png` among `.jpg`s has it in another column."""
    batch = _wds_batch(samples[:4])
    batch["png"] = np.array([None, samples[1].jpg, None, None], dtype=object)
    batch["jpg"][1] = None
    batch["caption"] = np.array([None, None, samples[2].caption.encode(), None], dtype=object)
    batch["txt"][2] = float("nan")
    decoder = _decoder(tokenizer, with_keys=True)
    assert decoder(batch)[batch_schema.KEY].tolist() == [f"{i:09d}" for i in range(4)]
    del batch["txt"], batch["caption"]  # no caption column at all: every row counted, no error
    assert decoder(batch)[batch_schema.KEY].tolist() == [] and decoder.skipped == {"no_caption": 4}


def test_captions_that_are_not_utf8_or_not_text_are_counted_as_bad_captions(samples, tokenizer):
    batch = _wds_batch(samples[:4])
    batch["txt"] = np.array([b"caf\xe9 au lait", (samples[1].caption + " \u20ac").encode()[:-1], 5,
                             samples[3].caption.encode()], dtype=object)
    decoder = _decoder(tokenizer, with_keys=True)
    assert decoder(batch)[batch_schema.KEY].tolist() == ["000000003"]
    assert decoder.skipped == {"bad_caption": 3}


def test_damaged_metadata_gives_no_label_and_no_crash(samples, tokenizer):
    metas = [b'{"label": 1e400}', b'{"label": 100000000000000000000000}', b"[" * 100_000 + b"]" * 100_000,
             json.dumps({"label": 4, "image_id": "\udce9"}).encode()]  # a lone surrogate, valid JSON
    batch = _wds_batch(samples[:4])
    batch["json"] = np.array(metas, dtype=object)
    out = _decoder(tokenizer)(batch)
    assert out[batch_schema.LABEL].tolist() == [-1, -1, -1, 4]


def test_a_huge_caption_is_cut_before_tokenizing_to_the_same_tokens(samples, tokenizer, monkeypatch):
    from raylpclip.data import decode
    from raylpclip.data.caption_text import CHARS_PER_TOKEN
    from raylpclip.data.tokenization import tokenize

    huge = " ".join(["a red circle on grass"] * 6_000)  # 130 KB (of 1 MB, the tokenizer takes 1-8 s)
    tokenized = []
    monkeypatch.setattr(decode, "tokenize",
                        lambda tok, texts, **kw: tokenized.extend(texts) or tokenize(tok, texts, **kw))
    batch = _wds_batch(samples[:1])
    batch["txt"][0] = huge.encode()
    out = _decoder(tokenizer)(batch)
    assert [len(t) for t in tokenized] == [CHARS_PER_TOKEN * 12]
    assert np.array_equal(out[batch_schema.INPUT_IDS], tokenize(tokenizer, [huge], context_length=12)["input_ids"])


def test_no_usable_sample_stops_after_the_threshold(samples, tokenizer):
    batch = _wds_batch(samples)
    batch["jpg"] = np.array([b"garbage"] * 6, dtype=object)
    decoder = _decoder(tokenizer, fail_after_bad=10)
    assert decoder(batch)[batch_schema.IMAGE].shape == (0, 3, 16, 16)  # 6 seen: not yet
    with pytest.raises(DataError, match=r"no usable sample among the first 12 .*/data/00003\.tar.*'bad_image': 12"):
        decoder(batch)


def test_one_good_sample_keeps_the_run_going(samples, tokenizer):
    batch = _wds_batch(samples)
    batch["jpg"] = np.array([samples[0].jpg] + [b"garbage"] * 5, dtype=object)
    decoder = _decoder(tokenizer, fail_after_bad=4)
    for _ in range(3):
        assert decoder(batch)[batch_schema.IMAGE].shape[0] == 1
    assert decoder.skipped == {"bad_image": 15}


@pytest.mark.parametrize("actor", ["training batches", "probe and eval views"])
def test_decode_actors_tokenize_on_their_own_cpu_unless_the_user_says_otherwise(tokenizer, monkeypatch, actor):
    """A decode actor reserves one CPU; a fast tokenizer would batch-encode on every core of the machine."""
    from raylpclip.data.views import ViewDecoder
    from raylpclip.runtime.data.decode_pool import CountingDecoder

    def make():
        if actor == "training batches":
            return CountingDecoder(tokenizer=tokenizer, image_size=16, context_length=12, train=False)
        return ViewDecoder(views=["clean"], image_size=16, tokenizer=tokenizer, context_length=12)

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "")  # records this process's value, put back after the test
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    make()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    make()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
