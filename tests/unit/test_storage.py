"""s3fs options and the filesystem handed to Ray Data."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from raylpclip.config import S3Config
from raylpclip.data.storage import arrow_filesystem, s3_options


def test_s3_options_carry_endpoint_timeouts_and_env_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    opts = s3_options(S3Config(endpoint_url="http://127.0.0.1:9", region="eu-west-1", connect_timeout=2, max_attempts=3))
    assert opts["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}
    assert opts["config_kwargs"]["connect_timeout"] == 2
    assert opts["config_kwargs"]["retries"] == {"max_attempts": 3, "mode": "standard"}
    assert (opts["key"], opts["secret"]) == ("AKIDTEST", "sekret") and "token" not in opts


def test_anonymous_access_sends_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekret")
    opts = s3_options(S3Config(anon=True))
    assert opts["anon"] is True and "key" not in opts and "secret" not in opts


def test_arrow_filesystem_by_scheme():
    assert arrow_filesystem(["/data/00000.tar"], S3Config()) is None
    assert isinstance(arrow_filesystem(["s3://b/00000.tar"], S3Config(endpoint_url="http://127.0.0.1:9")), pafs.PyFileSystem)
    with pytest.raises(ValueError, match="mixes filesystems"):
        arrow_filesystem(["s3://b/00000.tar", "/data/00001.tar"], S3Config())
