"""Ray stays at the edge: the core (config, data, models, losses, engine, eval) imports without it."""

import subprocess
import sys

CORE = [
    "raylpclip.config", "raylpclip.batch_schema", "raylpclip.distributed", "raylpclip.losses",
    "raylpclip.models.clip", "raylpclip.models.bpe_tokenizer", "raylpclip.models.factory", "raylpclip.models.ema",
    "raylpclip.data.decode", "raylpclip.data.shard_writer", "raylpclip.data.synthetic", "raylpclip.data.metadata",
    "raylpclip.engine.loop", "raylpclip.engine.pretrain_task", "raylpclip.eval.batch_eval",
    "raylpclip.engine.checkpoint_state", "raylpclip.eval.zeroshot", "raylpclip.eval.metrics", "raylpclip.commands.demo",
    "raylpclip.cli",
]


def test_core_imports_without_ray():
    code = f"import sys; import {', '.join(CORE)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
