"""`raylpclip shards contexts|procedural` up to the Ray writer (replaced here by a recorder): options become
the spec the Python entry points take, bad options fail before Ray with the option named."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from raylpclip import cli
from raylpclip.commands import world_shards
from raylpclip.commands.shards import cmd_shards
from raylpclip.data.context_world import ContextWorldSpec, context_world_items
from raylpclip.data.sources import GeneratedItem


@pytest.fixture
def recorded(monkeypatch):
    """Stands in for shard_output.write_source: keeps what would have been written."""
    calls = []

    def fake_write_source(items, extra, *, source, out, image_size, seed, options, listing=None, start=None):
        calls.append({"items": list(items), "extra": extra, "source": source, "image_size": image_size,
                      "seed": seed, "options": options})
        return Path(out) / "summary.json", {"samples": len(items)}

    monkeypatch.setattr(world_shards, "write_source", fake_write_source)
    return calls


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 40, 90)).save(root / name / f"{i}.png")
    return root


def test_contexts_command_is_write_context_split_with_the_parsed_spec(folder, tmp_path, recorded):
    path = cmd_shards(["contexts", str(folder), str(tmp_path / "out"), "--contexts", "blurry,grayscale,dark",
                       "--contexts-per-image", "0.5,0.5", "--mention-p", "0.5", "--mismatch-fraction", "0.2",
                       "--seed", "3", "--samples-per-shard", "7", "--image-size", "6"])
    assert path == tmp_path / "out" / "summary.json"
    call = recorded[0]
    spec = ContextWorldSpec(contexts=("blurry", "grayscale", "dark"), contexts_per_image=(0.5, 0.5), mention_p=0.5,
                            mismatch_fraction=0.2, seed=3, image_size=6)
    expected = context_world_items(folder, spec)
    assert [(i.path, i.caption, i.meta, i.edit) for i in call["items"]] == \
        [(i.path, i.caption, i.meta, i.edit) for i in expected]
    assert call["image_size"] == 6 and call["seed"] == 3 and call["options"].samples_per_shard == 7
    assert call["options"].shuffle and call["extra"]["mismatched"] == 4
    assert call["extra"]["contexts_per_image"] == [0.5, 0.5] and call["extra"]["classnames"] == ["cat", "dog"]


def test_procedural_command_sends_generated_items_in_index_order(tmp_path, recorded):
    cmd_shards(["procedural", str(tmp_path / "out"), "--samples", "25", "--styles", "plain,outline",
                "--caption-mode", "subset", "--mention-p", "0.4", "--label-by", "shape", "--image-size", "16",
                "--start-index", "100"])
    call = recorded[0]
    assert all(isinstance(i, GeneratedItem) for i in call["items"])
    assert [i.index for i in call["items"]] == list(range(100, 125)) and not call["options"].shuffle
    spec = call["items"][0].recipe.spec
    assert (spec.styles, spec.caption_mode, spec.mention_p, spec.label_by, spec.image_size) == \
        (("plain", "outline"), "subset", 0.4, "shape", 16)
    assert call["extra"]["image_size"] == 16 and call["extra"]["classnames"][:2] == ["circle", "square"]


@pytest.mark.parametrize("args, says", [
    (["--contexts", "blurry,foggy"], "unknown contexts ['foggy']"),
    (["--exact-contexts", "3", "--contexts", "dark,bright"], "exact_contexts=3"),
])
def test_bad_context_options_fail_before_writing(folder, tmp_path, recorded, capsys, args, says):
    assert cli.main(["shards", "contexts", str(folder), str(tmp_path / "out"), *args]) == 1
    assert says in capsys.readouterr().err and not recorded


@pytest.mark.parametrize("args", [["--contexts-per-image", "a,b"], ["--mention-p", "2"], ["--contexts", ","]])
def test_malformed_options_exit_2(folder, tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        cmd_shards(["contexts", str(folder), str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2


def test_procedural_needs_a_known_style(tmp_path, recorded, capsys):
    assert cli.main(["shards", "procedural", str(tmp_path / "o"), "--samples", "5", "--styles", "plain,oil"]) == 1
    assert "SyntheticSpec.styles" in capsys.readouterr().err and not recorded
