"""The command line fails fast with one clear line (before Ray starts) on bad configs and paths."""

import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "raylpclip", *args], capture_output=True, text=True, timeout=120)


def test_unknown_key_exits_2_naming_it():
    out = _run("pretrain", "data.train=/x", "psd.a_maxx=0.3")
    assert out.returncode == 2
    assert "psd.a_maxx" in out.stderr and "Traceback" not in out.stderr


def test_impossible_value_exits_2_naming_it():
    out = _run("demo", "pretrain.psd.a_max=2")
    assert out.returncode == 2 and "'psd.a_max'" in out.stderr


def test_missing_shards_give_one_line_naming_the_path(tmp_path):
    out = _run("pretrain", f"data.train={tmp_path}/nothing-here", f"output_dir={tmp_path}")
    assert out.returncode == 1
    assert "nothing-here" in out.stderr and "Traceback" not in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr  # it failed before Ray started


def test_pretrain_requires_train_data():
    out = _run("pretrain")
    assert out.returncode == 2 and "data.train" in out.stderr
