"""Security of a live local instance: every socket its processes listen on is loopback, the job API
refuses requests without the cluster's token, and the Ray Data readers never unpickle a shard member."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raylpclip import batch_schema
from raylpclip.config import DataConfig
from raylpclip.models.bpe_tokenizer import train_tokenizer
from raylpclip.runtime.data.decode_pool import eval_dataset, train_source

from ..unit.test_security import payload_bytes, shard_with_payloads

pytestmark = pytest.mark.ray


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_local_instance_listens_on_loopback_only(ray_session):
    import psutil  # Ray's own dependency

    me = psutil.Process(os.getpid())
    ours = {p.pid: p.name() for p in [me, *me.children(recursive=True)]}
    listening = [(ours[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                 if c.pid in ours and c.status == psutil.CONN_LISTEN]
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the instance is this test process's
    exposed = [entry for entry in listening if not _loopback(entry[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"


def _dashboard() -> str:
    import ray

    url = ray._private.worker._global_node.webui_url
    assert url and url.split(":")[0] in ("127.0.0.1", "localhost"), url
    return f"http://{url}"


def _token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip()


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            json.loads(response.read() or b"null")
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_job_api_refuses_requests_without_the_token(ray_session):
    jobs = _dashboard() + "/api/jobs/"
    assert _get(jobs) in (401, 403)
    assert _get(jobs, token="not-the-token") in (401, 403)
    assert _get(jobs, token=_token()) == 200


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    captions = [f"a photo of a {c} square." for c in ("red", "green", "blue")] * 20
    return train_tokenizer(captions, vocab_size=300, out_dir=str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("reader", ["positioned", "plain"])
def test_readers_never_unpickle_shard_members(ray_session, tmp_path, tokenizer, reader):
    """A shard whose samples carry `.pyd`, `.pickle` and `.pth` members that would create a file when
    unpickled or torch.loaded: a full read and decode pass keeps every sample, runs nothing."""
    proof = tmp_path / "pwned"
    (tmp_path / "shards").mkdir()
    shard = shard_with_payloads(tmp_path / "shards" / "00000.tar", proof, n=8)
    cfg = DataConfig(image_size=16, context_length=8)
    if reader == "positioned":
        ds = train_source([str(shard)], fmt="webdataset", cfg=cfg, tokenizer=tokenizer)
    else:
        ds = eval_dataset(dataclasses.replace(cfg, eval=str(shard.parent)), tokenizer=tokenizer)  # no positions
    rows = sum(len(b[batch_schema.IMAGE]) for b in ds.iter_batches(batch_size=4))
    assert rows == 8
    assert not proof.exists()
    pickle.loads(payload_bytes(proof)["pickle"])  # the control: these bytes do run when unpickled
    assert proof.exists()
