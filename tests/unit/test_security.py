"""Security without Ray: shard members stay bytes (a pickle payload in a shard never runs), paths
from configs and shards stay inside their output directory, cluster files keep auth and the
dashboard private. (Checkpoint loading: tests/unit/test_checkpoint_choice.py; sockets and the job
API of a live instance: tests/integration/test_security.py.)"""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from raylpclip.config import ConfigError, PretrainConfig, load_config
from raylpclip.data.decode import BatchDecoder
from raylpclip.data.sample import Sample
from raylpclip.data.shard_writer import write_shard
from raylpclip.data.synthetic import SyntheticSpec, generate_samples
from raylpclip.data.tarstream import group_samples, readable_members
from raylpclip.models.bpe_tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling (or torch.load without weights_only) of this creates `path`: proof of execution."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def payload_bytes(proof: Path) -> dict[str, bytes]:
    pickled = pickle.dumps(Payload(proof), protocol=2)
    torch_file = io.BytesIO()
    torch.save({"x": Payload(proof)}, torch_file)
    return {"pyd": pickled, "pickle": pickled, "pth": torch_file.getvalue()}


def shard_with_payloads(path: Path, proof: Path, n: int = 4) -> Path:
    """A webdataset tar whose samples carry `.pyd`, `.pickle` and `.pth` members next to jpg/txt: the
    extensions webdataset's default decoders unpickle or torch.load."""
    samples = list(generate_samples(n, spec=SyntheticSpec(image_size=24), seed=0))
    with tarfile.open(path, "w") as tar:
        for i, s in enumerate(samples):
            members = {"jpg": s.jpg, "txt": s.caption.encode(), **payload_bytes(proof)}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_payload_is_live(tmp_path):
    """The control: the bytes in the shard do run code when unpickled (so the test below can fail)."""
    proof = tmp_path / "pwned"
    pickle.loads(payload_bytes(proof)["pyd"])
    assert proof.exists()


def test_shard_members_are_never_unpickled(tmp_path):
    proof = tmp_path / "pwned"
    shard = shard_with_payloads(tmp_path / "00000.tar", proof)
    with open(shard, "rb") as f:
        rows = list(group_samples(readable_members(f, str(shard))))
    assert [sorted(r) for r in rows] == [["__key__", "jpg", "pickle", "pth", "pyd", "txt"]] * 4
    assert all(isinstance(r["pyd"], bytes) for r in rows)
    tokenizer = train_tokenizer([r["txt"].decode() for r in rows] * 10, vocab_size=300, out_dir=str(tmp_path / "tok"))
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = BatchDecoder(tokenizer=tokenizer, image_size=16, context_length=8, train=False)(batch)
    assert len(out["image"]) == 4 and set(out) == {"image", "input_ids", "attention_mask", "label", "image_id"}
    assert not proof.exists()


@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/../../b", "/etc", "runs/x", ""])
def test_run_names_cannot_leave_the_output_directory(name):
    with pytest.raises(ConfigError, match=r"config key 'name': got .*, expected a plain directory name"):
        load_config(PretrainConfig, None, [f"name='{name}'"])


def test_shard_keys_come_from_the_writer_not_the_samples(tmp_path):
    """A sample's own key (here a path that climbs out) never names a file: keys are assigned from
    (shard id, position), and every member lands inside the output directory."""
    s = next(iter(generate_samples(1, spec=SyntheticSpec(image_size=24), seed=0)))
    evil = Sample(key="../../escaped", jpg=s.jpg, caption=s.caption, meta={})
    out = tmp_path / "shards"
    write_shard([evil], str(out), shard_id=0, samples_per_shard=10)
    assert not list(tmp_path.glob("escaped*")) and not list(tmp_path.parent.glob("escaped*"))
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    with tarfile.open(out / "00000.tar") as tar:
        assert tar.getnames() == ["000000.jpg", "000000.json", "000000.txt"]  # shard 0, index 0 (10 per shard)


def _code(path: Path) -> str:
    """A config file without its comments (they may well mention what must not be done)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(errors="replace").splitlines())


def test_cluster_and_job_files_keep_auth_on_and_the_dashboard_private():
    """Every `ray start` and every Ray container runs with token auth; nothing turns it off; the
    dashboard/job API port is never opened to the world (no 0.0.0.0/0 rule, no LoadBalancer,
    NodePort or Ingress): it is reached through a tunnel or port-forward."""
    files = [p for d in ("cluster", "jobs") for p in (REPO / d).rglob("*") if p.is_file()]
    assert files
    for path in files:
        code = _code(path)
        assert not re.search(r"RAY_AUTH_MODE\W*(=|value:)?\W*disabled", code), path
        assert "0.0.0.0/0" not in code and "::/0" not in code, path
        assert not re.search(r"type:\s*(LoadBalancer|NodePort)|kind:\s*Ingress", code), path
        for start in re.findall(r"[^\n;]*\bray start\b[^\n]*", code):
            assert "RAY_AUTH_MODE=token" in start, (path, start)
        if re.search(r"^kind:\s*Ray(Cluster|Job)", code, re.MULTILINE):
            assert re.search(r"name:\s*RAY_AUTH_MODE\s*\n\s*value:\s*['\"]?token", code), path
