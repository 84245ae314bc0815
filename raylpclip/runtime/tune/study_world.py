"""A study's data: the world's five splits, written once into `<study>/data/` with the Ray shard writer.

As web pretraining data covers more of the world than a downstream task's data, pretraining sees every
context and the downstream task only the ID ones; the held-out contexts are what the pretrained model
knows and fine-tuning on the downstream data may make it forget (CAR-FT's premise):
- pretrain: the training images with every context (ID and held-out) and noisy, partial captions;
- downstream: the same training images with the ID contexts only, labelled (probe and fine-tuning data);
- test-id: held-out images with the ID contexts, the ID test; its captions are exact;
- test-ood: the same held-out images, each with one held-out context (procedural: in a held-out style);
- test-clean: the same held-out images with no context (plain style): the clean test set, whose
  corrupted copies the robustness evaluation makes;
- train-clean: `headroom_train_samples` training images with no context, which the headroom probe fits.
The specs are kept in data/world.json; a re-run with another world is refused (the cells would mix).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from raylpclip.commands.shard_output import WriteOptions
from raylpclip.commands.study import StudyWorld
from raylpclip.commands.world_shards import write_context_split, write_procedural_split
from raylpclip.config import ConfigError
from raylpclip.data.context_captions import ADJECTIVES
from raylpclip.data.context_world import ContextWorldSpec
from raylpclip.data.image_contexts import CONTEXTS
from raylpclip.data.synthetic import SyntheticSpec
from raylpclip.experiments.study_plan import SPLITS, StudyPlan

TEST_SEED_OFFSET = 1_000_003  # the test splits' draws never repeat the training split's


def id_contexts(world: StudyWorld) -> list[str]:
    """The ID contexts (downstream data and the ID test): as given, else every context but the held-out ones."""
    return list(world.contexts) or [c for c in CONTEXTS if c not in world.heldout_contexts]


def context_templates(world: StudyWorld) -> list[str]:
    """One prompt per context of the world ("a blurry photo of a {}."): what the report's context
    cosines embed. The procedural world's contexts are its styles."""
    if world.kind == "procedural":
        return [f"a {style} drawing of a {{}}." for style in [*world.styles, *world.heldout_styles]]
    return [f"a {ADJECTIVES[c][0]} photo of a {{}}." for c in [*id_contexts(world), *world.heldout_contexts]]


def _context_specs(world: StudyWorld, headroom_images: int) -> dict[str, ContextWorldSpec]:
    common = dict(image_size=world.image_size, mention_p=world.mention_p,
                  contexts_per_image=tuple(world.contexts_per_image))
    test = dict(common, seed=world.seed + TEST_SEED_OFFSET, max_images=world.test_samples or None)
    ids = tuple(id_contexts(world))
    return {
        "pretrain": ContextWorldSpec(contexts=ids + tuple(world.heldout_contexts), seed=world.seed,
                                     mismatch_fraction=world.mismatch_fraction, **common),
        "downstream": ContextWorldSpec(contexts=ids, seed=world.seed + 1, **common),
        "test-id": ContextWorldSpec(contexts=ids, **test),
        "test-ood": ContextWorldSpec(contexts=tuple(world.heldout_contexts), **{**test, "exact_contexts": 1}),
        "test-clean": ContextWorldSpec(contexts=ids, **{**test, "exact_contexts": 0}),
        "train-clean": ContextWorldSpec(contexts=ids, **{**common, "seed": world.seed + 2, "exact_contexts": 0,
                                                         "max_images": headroom_images}),
    }


def _procedural_specs(world: StudyWorld, headroom_images: int) -> dict[str, tuple[int, SyntheticSpec, int, float]]:
    spec = SyntheticSpec(image_size=world.image_size, caption_mode="subset", mention_p=world.mention_p)
    test_n, test_seed = world.test_samples or 2000, world.seed + TEST_SEED_OFFSET
    every = tuple(dict.fromkeys([*world.styles, *world.heldout_styles]))
    return {
        "pretrain": (world.train_samples, dataclasses.replace(spec, styles=every), world.seed, world.mismatch_fraction),
        "downstream": (world.train_samples, dataclasses.replace(spec, styles=tuple(world.styles)), world.seed + 1, 0.0),
        "test-id": (test_n, dataclasses.replace(spec, styles=tuple(world.styles)), test_seed, 0.0),
        "test-ood": (test_n, dataclasses.replace(spec, styles=tuple(world.heldout_styles)), test_seed, 0.0),
        "test-clean": (test_n, dataclasses.replace(spec, styles=("plain",)), test_seed, 0.0),
        "train-clean": (headroom_images, dataclasses.replace(spec, styles=("plain",)), world.seed + 2, 0.0),
    }


def _specs(plan: StudyPlan) -> dict[str, Any]:
    world, headroom_images = plan.cfg.world, plan.cfg.headroom_train_samples
    return _context_specs(world, headroom_images) if world.kind == "contexts" else _procedural_specs(world, headroom_images)


def _record(plan: StudyPlan) -> dict[str, Any]:
    world, specs = plan.cfg.world, _specs(plan)
    return {"kind": world.kind, "train_folder": world.train_folder, "test_folder": world.test_folder,
            "samples_per_shard": world.samples_per_shard,
            "splits": {name: repr(spec) for name, spec in specs.items()}}


def write_world(plan: StudyPlan) -> None:
    """Every split that is not written yet (a split's summary.json is written last by the shard writer)."""
    world, data = plan.cfg.world, plan.dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    record, saved, specs = _record(plan), data / "world.json", _specs(plan)
    if saved.is_file() and json.loads(saved.read_text()) != record:
        raise ConfigError(f"config key 'world': {data} holds another world's splits; delete it or use another "
                          "study name")
    saved.write_text(json.dumps(record, indent=2))
    # A split without its summary.json was cut short: written again from the start.
    options = WriteOptions(samples_per_shard=world.samples_per_shard, overwrite=True)
    for name in SPLITS:
        out = plan.split(name)
        if (out / "summary.json").is_file():
            continue
        if world.kind == "contexts":
            folder = world.test_folder if name.startswith("test") else world.train_folder
            write_context_split(folder, out, specs[name], options=options)
        else:
            samples, spec, seed, mismatch = specs[name]
            write_procedural_split(out, samples, spec, seed=seed, mismatch_fraction=mismatch, options=options)
