"""`raylpclip <command> [config.yaml] [key=value ...]`.

Every command resolves its config (defaults <- YAML <- overrides) before doing any work, writes
`summary.json` into its output directory and prints that path as its last line. Each command lives in
its own module under raylpclip/commands/, imported only when it runs (so `raylpclip demo` does not pay
for Ray Tune, and a config error is reported before Ray is imported).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from raylpclip.config import ConfigError
from raylpclip.run_outcome import EXIT_STOPPED, RunStopped
from raylpclip.runtime.cluster.console import VERBOSE_ENV

USAGE = "raylpclip [--verbose] COMMAND [CONFIG.yaml] [key=value ...]"

# command -> "module:function"; the function takes the command's arguments and returns summary.json's path.
COMMANDS: dict[str, str] = {
    "bench": "raylpclip.commands.bench:cmd_bench",
    "convert": "raylpclip.commands.convert:cmd_convert",
    "demo": "raylpclip.commands.demo:cmd_demo",
    "eval": "raylpclip.commands.evaluate:cmd_eval",
    "finetune": "raylpclip.commands.finetune:cmd_finetune",
    "plot": "raylpclip.commands.plot:cmd_plot",
    "pretrain": "raylpclip.commands.pretrain:cmd_pretrain",
    "probe": "raylpclip.commands.probe:cmd_probe",
    "scaling": "raylpclip.commands.scaling:cmd_scaling",
    "shards": "raylpclip.commands.shards:cmd_shards",
    "study": "raylpclip.commands.study:cmd_study",
    "sweep": "raylpclip.commands.sweep:cmd_sweep",
    "tokenizer": "raylpclip.commands.tokenizer:cmd_tokenizer",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raylpclip", usage=USAGE, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's own output too (worker start-up, Ray Data, core-worker logs)")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [key=value ...]")
    ns = parser.parse_args(argv)
    if ns.verbose:  # through the environment, so that Ray workers and Tune trials see it too
        os.environ[VERBOSE_ENV] = "1"
    module, function = COMMANDS[ns.command].split(":")
    try:
        summary_path = getattr(importlib.import_module(module), function)(ns.args)
    except ConfigError as exc:
        print(f"raylpclip {ns.command}: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # on notice (SIGTERM, preemption), after a checkpoint: resumable, not a failure
        print(f"[raylpclip] {exc}", flush=True)
        return EXIT_STOPPED
    except (OSError, ValueError, KeyError) as exc:  # missing shards, bad data, unreachable storage
        print(f"raylpclip {ns.command}: error: {exc}", file=sys.stderr)
        return 1
    print(summary_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
