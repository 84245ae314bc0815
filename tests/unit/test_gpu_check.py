"""The GPU check (scripts/gpu_check.sh, raylpclip/bench/gpu_check.py) on a machine without a GPU: it skips
cleanly, its step code runs on CPU (--cpu-smoke), carried wheels install into a temporary folder, and neither
it nor the GPU tests it runs import Ray or omegaconf (the GPU machines have neither)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from raylpclip.bench.gpu_check import batch_plan, format_table, parse_args

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
# Run first in a child Python: any import of these packages fails, as it would on the GPU machines.
BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "omegaconf", "s3fs"):
            raise ImportError(f"{name} is not installed on the GPU machines")
sys.meta_path.insert(0, _Block())
"""


def _no_gpu_env(**extra: str) -> dict[str, str]:
    # An empty CUDA_VISIBLE_DEVICES hides any GPU, so the skip path is what runs, on any machine.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": "", **extra}


def test_script_skips_without_a_gpu(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], env=_no_gpu_env(GPU_CHECK_WHEELS=str(tmp_path)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "no CUDA device: skipped" in run.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped"] == "no CUDA device" and "bench train" in summary["tier2_command"]


def test_cpu_smoke_runs_the_step_without_ray_or_omegaconf(tmp_path):
    code = BLOCK + f"from raylpclip.bench.gpu_check import main; sys.exit(main(['--cpu-smoke', '--out', {str(tmp_path)!r}]))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=_no_gpu_env())
    assert run.returncode == 0, run.stdout + run.stderr
    print(run.stdout)
    step = json.loads((tmp_path / "summary.json").read_text())["steps"][0]
    assert (step["preset"], step["batch_size"], step["timed_steps"]) == ("tiny", 8, 1)
    assert step["loss_finite"] and len(step["losses"]) == 2 and step["samples_per_s"] > 0
    assert step["mfu"] is None  # a CPU has no peak in the table
    assert step["train_gflops_per_sample"] > 2.9 * step["forward_gflops_per_sample"]["total"]
    assert "tiny" in run.stdout and "samples/s" in run.stdout


def test_gpu_tests_collect_and_skip_without_ray_or_omegaconf():
    code = BLOCK + ("import pytest; sys.exit(pytest.main(['tests/unit/test_gpu_paths.py', '-m', 'gpu', '-q', "
                    "'-p', 'no:cacheprovider', '-rs']))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=_no_gpu_env())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "5 skipped" in run.stdout and "no CUDA device" in run.stdout


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    path = folder / "gpucheckprobe-1.0-py3-none-any.whl"
    info = "gpucheckprobe-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("gpucheckprobe.py", "VALUE = 1\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpucheckprobe\nVersion: 1.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


def test_script_installs_carried_wheels_into_a_temporary_folder(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels)
    run = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], env=_no_gpu_env(GPU_CHECK_WHEELS=str(wheels)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "installed 1 carried wheel(s)" in run.stdout and "no CUDA device: skipped" in run.stdout
    site = run.stdout.split(" into ")[1].split()[0]
    assert not Path(site).exists()  # removed on exit


def test_batch_plan_defaults_and_overrides():
    assert batch_plan(parse_args([])) == [("vit-b-32", 256), ("vit-b-16", 128)]
    args = parse_args(["--presets", "vit-b-16", "--batch", "vit-b-16=64,256"])
    assert batch_plan(args) == [("vit-b-16", 64), ("vit-b-16", 256)]


def test_table_shows_errors_and_missing_mfu():
    table = format_table([
        {"preset": "vit-b-16", "batch_size": 4096, "error": "out of memory: ..."},
        {"preset": "tiny", "batch_size": 8, "step_time_s": 0.5, "samples_per_s": 16.0, "train_gflops_per_sample": 0.37,
         "achieved_tflops": 0.006, "mfu": None, "losses": [2.0, 1.9]},
    ])
    assert "out of memory" in table and " - " in table
