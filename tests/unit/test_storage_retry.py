"""Run storage retries transient errors with backoff and counts every retry; final errors pass
through at once. The wrapped filesystem here fails on purpose like S3 does (SlowDown, 503)."""

from __future__ import annotations

import http.server
import pickle
import threading

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from raylpclip.config import S3Config
from raylpclip.data.storage import (RetryingHandler, RetryPolicy, is_transient, storage_filesystem, take_failed_uploads,
                                    with_retries)

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002)
FAST_3 = RetryPolicy(max_attempts=3, base_s=0.001, cap_s=0.002)


class Flaky(pafs.FileSystemHandler):
    """A local filesystem whose first `fail` calls of each kind raise a transient S3-style error."""

    def __init__(self, fail: int, error: str = "AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate."):
        self.fs, self.fail, self.error, self.calls = pafs.LocalFileSystem(), fail, error, {}

    def _maybe_fail(self, kind):
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if self.calls[kind] <= self.fail:
            raise OSError(self.error)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def get_type_name(self):
        return "flaky"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        self._maybe_fail("info")
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self._maybe_fail("list")
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("no")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        self._maybe_fail("get")
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self._maybe_fail("get")
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._maybe_fail("put")
        return self.fs.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        raise OSError("no")


def _wrapped(fail: int, **kw):
    retries = []
    fs = pafs.PyFileSystem(RetryingHandler(pafs.PyFileSystem(Flaky(fail, **kw)), policy=FAST, on_retry=retries.append))
    return fs, retries


def test_transient_errors_are_retried_and_counted(tmp_path):
    fs, retries = _wrapped(fail=2)
    with fs.open_output_stream(str(tmp_path / "a.bin")) as out:
        out.write(b"x" * 1000)
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 1000
    with fs.open_input_stream(str(tmp_path / "a.bin")) as f:
        assert f.read() == b"x" * 1000
    infos = fs.get_file_info(pafs.FileSelector(str(tmp_path)))
    assert [i.base_name for i in infos] == ["a.bin"]
    # two failed attempts each for the PUT, the GET and the listing
    assert len(retries) == 6 and all("SLOW_DOWN" in r for r in retries)
    assert sum("PUT" in r for r in retries) == 2 and sum("GET" in r for r in retries) == 2


def test_whole_directory_copies_go_through_the_retries(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "state.pt").write_bytes(b"s" * 5000)
    (src / "meta.json").write_text("{}")
    fs, retries = _wrapped(fail=1)
    (tmp_path / "stored").mkdir()  # (S3 has no directories; a local inner filesystem needs it)
    pafs.copy_files(str(src), str(tmp_path / "stored"), destination_filesystem=fs)
    assert (tmp_path / "stored" / "state.pt").read_bytes() == b"s" * 5000
    assert sum("PUT" in r for r in retries) == 1  # the first upload failed once, the rest went through
    assert take_failed_uploads() == []


def test_an_upload_that_fails_for_good_is_reported_even_through_copy_files(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "state.pt").write_bytes(b"s")
    (tmp_path / "stored").mkdir()
    fs, retries = _wrapped(fail=99)
    # pyarrow's copy_files swallows the error a Python stream raises on close ...
    pafs.copy_files(str(tmp_path / "src"), str(tmp_path / "stored"), destination_filesystem=fs)
    assert not (tmp_path / "stored" / "state.pt").exists() and len(retries) == FAST.max_attempts - 1
    # ... so the failure is kept for the training loop to raise
    failed = take_failed_uploads()
    assert len(failed) == 1 and "state.pt" in failed[0] and "SLOW_DOWN" in failed[0]
    assert take_failed_uploads() == []


def test_final_errors_are_not_retried(tmp_path):
    fs, retries = _wrapped(fail=1, error="AWS Error ACCESS_DENIED during GetObject operation: Access Denied")
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        fs.open_input_stream(str(tmp_path / "missing"))
    assert retries == []


def test_attempts_run_out_and_the_last_error_surfaces():
    calls = []

    def op():
        calls.append(1)
        raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7, Couldn't connect")

    seen = []
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        with_retries(op, what="PUT x", policy=FAST, on_retry=seen.append)
    assert len(calls) == 4 and len(seen) == 3


@pytest.mark.parametrize("message,transient", [
    ("AWS Error SLOW_DOWN during PutObject operation", True),
    ("HTTP response code: 503", True),
    ("When uploading part: AWS Error INTERNAL_FAILURE", True),
    ("curlCode: 28, Timeout was reached", True),
    ("AWS Error ACCESS_DENIED", False),
    ("Path does not exist 'bucket/x'", False),
])
def test_transient_classification(message, transient):
    assert is_transient(OSError(message)) is transient
    assert not is_transient(ValueError(message))


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(max_attempts=10, base_s=0.2, cap_s=5.0)
    delays = [policy.delay(k) for k in (1, 2, 3, 10)]
    assert 0.1 <= delays[0] <= 0.2 and 0.2 <= delays[1] <= 0.4 and 0.4 <= delays[2] <= 0.8
    assert 2.5 <= delays[3] <= 5.0


def test_storage_filesystem_only_for_s3(monkeypatch):
    assert storage_filesystem("/tmp/runs", S3Config()) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    fs = storage_filesystem("s3://bucket/runs", S3Config(endpoint_url="http://127.0.0.1:9", max_attempts=3))
    assert isinstance(fs, pafs.PyFileSystem) and fs.type_name == "py::retrying+s3"
    assert isinstance(fs.handler.inner, pafs.S3FileSystem) and fs.handler.policy.max_attempts == 3
    pa.BufferReader  # noqa: B018 - pyarrow stays importable without Ray


class _Throttling(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request 503 SlowDown, and counts them."""

    hits = 0

    def _slow_down(self):
        type(self).hits += 1
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = _slow_down

    def log_message(self, *args):
        pass


def test_pickled_storage_filesystem_still_makes_one_attempt_per_retry():
    """Ray Train pickles the run-storage filesystem to its workers; pyarrow's S3FileSystem pickles
    without its retry strategy, and would then retry inside the AWS SDK, unseen and uncounted."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = S3Config(endpoint_url=f"http://127.0.0.1:{server.server_address[1]}", max_attempts=3)
        fs = pickle.loads(pickle.dumps(storage_filesystem("s3://runs/x", cfg)))
        fs.handler.policy = FAST_3
        with pytest.raises(OSError, match="SLOW_DOWN|503"):
            fs.get_file_info("runs/x/state.pt")
    finally:
        server.shutdown()
    assert _Throttling.hits == FAST_3.max_attempts  # not 3 x the SDK's own attempts
