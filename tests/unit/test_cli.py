"""The command line fails fast with one clear line (before Ray starts) on bad configs and paths."""

import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "raylpclip", *args], capture_output=True, text=True, timeout=120)


def test_unknown_key_exits_2_naming_it():
    out = _run("pretrain", "data.train=/x", "psd.a_maxx=0.3")
    assert out.returncode == 2
    assert "psd.a_maxx" in out.stderr and "Traceback" not in out.stderr


def test_impossible_value_exits_2_naming_it(tmp_path):
    out = _run("demo", "pretrain.psd.a_max=2", f"pretrain.output_dir={tmp_path}")
    assert out.returncode == 2 and "'psd.a_max'" in out.stderr
    assert not any(tmp_path.iterdir())  # refused before the demo's data was generated


def test_missing_shards_give_one_line_naming_the_path(tmp_path):
    out = _run("pretrain", f"data.train={tmp_path}/nothing-here", f"output_dir={tmp_path}")
    assert out.returncode == 1
    assert "nothing-here" in out.stderr and "Traceback" not in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr  # it failed before Ray started


def test_pretrain_requires_train_data():
    out = _run("pretrain")
    assert out.returncode == 2 and "data.train" in out.stderr


def test_tokenizer_train_from_shards_then_loads(tmp_path):
    from raylpclip.data.shard_writer import write_shards
    from raylpclip.data.synthetic import SyntheticSpec, generate_samples
    from raylpclip.models.bpe_tokenizer import load_tokenizer

    write_shards(generate_samples(40, spec=SyntheticSpec(image_size=16), seed=1), str(tmp_path / "shards"),
                 fmt="parquet", samples_per_shard=20)
    out = _run("tokenizer", "train", str(tmp_path / "shards"), str(tmp_path / "tok"), "--vocab-size", "300")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "tok" / "summary.json")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert 256 < len(tokenizer) <= 300


def test_tokenizer_from_clip_bpe(shared_data, tmp_path):
    out = _run("tokenizer", "clip-bpe", str(shared_data / "clip" / "bpe_simple_vocab_16e6.txt.gz"), str(tmp_path / "clip"))
    assert out.returncode == 0, out.stderr
    # openai/CLIP's simple_tokenizer gives these ids for "a photo of a dog." (49406/49407: start/end).
    assert "[49406, 320, 1125, 539, 320, 1929, 269, 49407" in out.stdout


def test_unreachable_bucket_fails_fast_with_one_line(tmp_path):
    import time

    started = time.monotonic()
    out = _run("pretrain", "data.train=s3://no-such-bucket/shards/{00000..00009}.tar", f"output_dir={tmp_path}",
               "data.s3.endpoint_url=http://127.0.0.1:9", "data.s3.connect_timeout=1", "data.s3.max_attempts=1")
    assert out.returncode == 1, out.stderr
    assert "cannot list shards at 's3://no-such-bucket/shards/{00000..00009}.tar'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("args, key", [
    (["probe", "model=/m", "data.train=/t", "data.eval=/e", "lpclip.roundz=2"], "lpclip.roundz"),
    (["probe", "data.train=/t", "evaluate=false"], "'model'"),
    (["eval", "classifiers=[/c]", "data.eval=/e", "robustness.corruptions=[fog2]"], "robustness.corruptions"),
    (["eval", "data.eval=/e", "inference.precision=fp8"], "inference.precision"),
])
def test_probe_and_eval_reject_a_bad_config_before_importing_ray(args, key):
    """The command's run config is checked in the command's own module, so Ray is never imported."""
    code = ("import sys\nfrom raylpclip.cli import main\n"
            f"rc = main({args!r})\nprint('result', rc, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "result 2 False", out.stdout + out.stderr
    assert key in out.stderr and "Traceback" not in out.stderr
