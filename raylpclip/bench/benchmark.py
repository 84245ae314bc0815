"""What `raylpclip bench NAME` needs of a benchmark: its entry module's `BENCHMARK`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Benchmark:
    config: type  # its config dataclass, loaded from CONFIG.yaml and key=value overrides
    run: Callable[[Any], dict[str, Any]]  # config -> summary (written to summary.json in summary["run_dir"])
    format_table: Callable[[dict[str, Any]], str]  # summary -> the table printed at the end
