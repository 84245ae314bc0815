"""What the fault drills share (tests/integration/test_faults*.py): the short pretraining run every fault is
injected into, how a run is traced and compared with the uninterrupted reference, and the fault table every
drill adds its row to. The fixtures (the tokenizer, the reference run, the table) are session-wide, in
conftest.py, so that one reference run serves every drill module and one table, printed at the end of the
session (and written to runs/faults/fault_table.{md,json}), holds every row."""

from __future__ import annotations

import json
import os
from pathlib import Path

from raylpclip.config import PretrainConfig, load_config
from raylpclip.runtime.train.pretrain_driver import run_pretrain
from tests.drills.worker_kills import TRACE_ENV, TraceRecords

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY, BATCH = 40, 10, 32
INTERVAL = EVERY * BATCH  # samples of one checkpoint interval
# Final loss (mean of the last 10 steps) of a faulted run vs the reference: the data order differs
# between any two runs (parallel reads), which moves it by up to ~0.15 here.
LOSS_TOLERANCE = 0.3


def overrides(shards, tokenizer_dir, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.train={shards['webdataset']}", f"output_dir={out}", f"name={name}", f"model.tokenizer={tokenizer_dir}",
        f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}", f"train.log_every={EVERY}", f"train.batch_size={BATCH}",
        "train.keep_checkpoints=2", "data.image_size=32", "data.shuffle_buffer=64", "data.decode_batch_size=64",
        "model.overrides={vision.image_size: 32, vision.patch_size: 8, vision.num_hidden_layers: 1, text.num_hidden_layers: 1}",
        *extra,
    ]


class FaultTable:
    """Rows of the closing table, written and printed when the module ends."""

    COLUMNS = ("fault", "finished", "final step", "reference step", "resumed from", "samples replayed",
               "replay bound", "retries counted", "final loss", "reference loss")

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, fault: str, summary: dict | None, reference: dict, records: TraceRecords | None, *,
            resumed_from=None, bound=INTERVAL) -> None:
        self.rows.append({
            "fault": fault, "finished": summary is not None and summary.get("step") == STEPS,
            "final step": summary.get("step") if summary else None, "reference step": reference["step"],
            "resumed from": resumed_from, "samples replayed": records.replayed() if records else None,
            "replay bound": bound,
            "retries counted": summary.get("storage_retries", 0) + summary.get("read_retries", 0) if summary else None,
            "final loss": round(summary["loss"], 4) if summary else None,
            "reference loss": round(reference["loss"], 4)})

    def write(self) -> str:
        """Write runs/faults/fault_table.{md,json} (or $RAYLPCLIP_RESULTS_DIR) and return the text to print."""
        out = Path(os.environ.get("RAYLPCLIP_RESULTS_DIR", REPO / "runs" / "faults"))
        out.mkdir(parents=True, exist_ok=True)
        text = (f"Faults injected into {STEPS}-step runs (batch {BATCH}, checkpoint every {EVERY} steps, 2 CPU "
                f"workers), against one uninterrupted run\n\n{self.markdown()}\n")
        (out / "fault_table.md").write_text(text)
        (out / "fault_table.json").write_text(json.dumps(self.rows, indent=2))
        return text

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        for row in self.rows:
            lines.append("| " + " | ".join("" if row[c] is None else str(row[c]) for c in self.COLUMNS) + " |")
        return "\n".join(lines)


def run_traced(cfg_overrides: list[str], probe: Path, monkeypatch) -> tuple[dict, TraceRecords]:
    monkeypatch.setenv(TRACE_ENV, str(probe))
    summary = run_pretrain(load_config(PretrainConfig, None, cfg_overrides))
    return summary, TraceRecords.read(probe)


def assert_close_to_reference(summary: dict, reference: dict) -> None:
    assert summary["step"] == STEPS and summary["samples_seen"] == STEPS * BATCH
    assert abs(summary["loss"] - reference["summary"]["loss"]) < LOSS_TOLERANCE, (summary["loss"], reference["summary"]["loss"])
