"""`raylpclip study` end to end on the procedural world with a reduced design: the world's splits, the
cells, the report with every claim's interval and verdict, and a re-run that skips every finished cell.
The default run covers the pretraining part (4 cells, ~2 minutes); `pytest -m slow` runs every part
(headroom, probes, fine-tuning, evaluation)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from raylpclip.cli import main
from raylpclip.data.metadata import iter_records
from raylpclip.data.shard_files import resolve_shards

pytestmark = pytest.mark.usefixtures("ray_session")

DESIGN = """
name: {name}
output_dir: {out}
world: {{kind: procedural, train_samples: 1200, test_samples: 200, samples_per_shard: 300, image_size: 32}}
seeds: [0, 1]
sizes: {sizes}
parts: {parts}
pretrain:
  data: {{context_length: 24, decode_batch_size: 300, eval_max_samples: 200}}
  model: {{overrides: {{vision.image_size: 32, vision.patch_size: 8, vision.num_hidden_layers: 1,
                       text.num_hidden_layers: 1}}, vocab_size: 400}}
  train: {{steps: 8, batch_size: 32, checkpoint_every: 8, log_every: 4, num_workers: 1}}
probe: {{lpclip: {{rounds: 1, epochs: 2, batch_size: 64}}, train: {{num_workers: 1}}}}
finetune:
  train: {{steps: 4, batch_size: 32, checkpoint_every: 4, log_every: 2, num_workers: 1}}
  wise_alphas: [0.5]
  data: {{context_length: 24}}
robustness: {{corruptions: [gaussian_noise, fog], severities: [3]}}
inference: {{batch_size: 200}}
headroom_train_samples: 300
"""


def _run(design: Path, capsys) -> tuple[dict, str]:
    assert main(["study", str(design)]) == 0
    out = capsys.readouterr().out
    return json.loads(Path(out.strip().splitlines()[-1]).read_text()), out


def _design(tmp_path: Path, name: str, sizes: str, parts: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(DESIGN.format(name=name, out=tmp_path, sizes=sizes, parts=parts))
    return path


def test_a_reduced_study_reports_and_a_rerun_skips_what_finished(tmp_path, capsys):
    design = _design(tmp_path, "reduced", "[1.0]", "[pretrain]")
    summary, _ = _run(design, capsys)
    study = tmp_path / "reduced"
    assert (summary["cells"], summary["cells_run"], summary["cells_skipped"]) == (4, 4, 0)
    ood = [r for f in resolve_shards(str(study / "data" / "test-ood"))[0] for r in iter_records([f], fmt="webdataset")]
    assert {r["meta"]["style"] for r in ood} == {"noisy"}  # the held-out style only
    report = (study / "report.md").read_text()
    for section in ("## Claims", "## Pretraining (claim 1)", "design is the one the first results"):
        assert section in report
    claims = {c["id"]: c for c in summary["claims"]}
    first = claims[1]["parts"][0]
    assert first["test"] == "paired t over seeds" and first["n"] == 2 and first["low"] <= first["estimate"] <= first["high"]
    assert claims[2]["verdict"] == claims[3]["verdict"] == "not run"
    rows = (study / "results.csv").read_text().splitlines()
    assert sum(",pretrain," in r or r.startswith("pretrain,") for r in rows) >= 4 * 5
    started = time.monotonic()
    again, out = _run(design, capsys)
    assert (again["cells_run"], again["cells_skipped"]) == (0, 4) and "4 finished before" in out
    assert time.monotonic() - started < 60  # nothing trained again


@pytest.mark.slow
def test_every_part_of_a_reduced_study(tmp_path, capsys):
    design = _design(tmp_path, "full", "[0.5, 1.0]", "[pretrain, headroom, probe, finetune]")
    summary, _ = _run(design, capsys)
    assert summary["cells_run"] == summary["cells"] == 2 * 2 * 2 + 2 * 2 + 2 + 2 * 2 + 2 * 2 * 3
    for claim in summary["claims"]:
        assert claim["verdict"] in ("holds", "fails", "undetermined"), claim
        assert all("low" in p for p in claim["parts"]), claim
    study = tmp_path / "full"
    assert {p.name for p in study.glob("*.png")} == {"scaling.png", "lpclip.png", "finetune.png"}
    assert (study / "eval" / "probe-lpclip-s1-test-clean" / "predictions.npz").is_file()
    again, _ = _run(design, capsys)
    assert again["cells_run"] == 0
