"""An S3 endpoint behind a loopback proxy that fails chosen requests: 503 SlowDown, a connection reset
half-way through an object's body, or a stall with no answer (a timeout on the client's side)."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


FAULTS = ("503", "reset", "stall")


class FaultProxy:
    """An HTTP proxy in front of an S3 endpoint (e.g. moto_server) on 127.0.0.1 that fails some requests
    instead of forwarding them. `fail(method, path)` decides per request: False (forward it), True or
    "503" (answer 503 SlowDown), "reset" (forward it, send the answer's headers and half of its body,
    then reset the connection: a drop mid-object), "stall" (send nothing for `stall_s`, then close: the
    client's read timeout fires first). `injected` counts the failures by (method, path), `by_fault` by
    kind, `forwarded` the rest.

        with FaultProxy("http://127.0.0.1:5000", fail=first_try_of(r"state\\.pt")) as proxy:
            ... data.s3.endpoint_url=proxy.url ...
    """

    def __init__(self, target: str, *, fail: Callable[[str, str], bool | str], stall_s: float = 10.0):
        self.target = target.split("://", 1)[-1].rstrip("/")
        self.fail, self.stall_s = fail, stall_s
        self.injected: Counter = Counter()
        self.by_fault: Counter = Counter()
        self.forwarded = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                body, chunked = self._body()
                with proxy._lock:
                    fault = proxy.fail(self.command, self.path)
                    fault = "503" if fault is True else fault
                    if fault:
                        assert fault in FAULTS, fault
                        proxy.injected[(self.command, self.path.split("?")[0])] += 1
                        proxy.by_fault[fault] += 1
                    else:
                        proxy.forwarded += 1
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                status, reason, headers, data = self._forward(body, chunked)
                self.send_response(status, reason)
                for k, v in headers:
                    # a HEAD answer keeps the object's length; other bodies are re-sent whole
                    if k.lower() not in ("transfer-encoding", "connection") and (
                            k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "reset":  # half the body, then an RST (SO_LINGER 0), not a clean close
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(data)

            def _forward(self, body: bytes, chunked: bool):
                conn = http.client.HTTPConnection(proxy.target, timeout=60)
                hop = ("connection", "transfer-encoding", "expect", "content-length", "keep-alive")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                if chunked:
                    conn.request(self.command, self.path, body=iter([body]), headers=headers, encode_chunked=True)
                else:
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp.status, resp.reason, resp.getheaders(), data

            def _body(self) -> tuple[bytes, bool]:
                """The request body, and whether it came chunked (HTTP/1.1 chunks are decoded here
                and sent on chunked again: the AWS SDK streams uploads that way)."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    length = int(self.headers.get("Content-Length") or 0)
                    return (self.rfile.read(length) if length else b""), False
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks), True
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler


def first_try_of(path_pattern: str, *, methods: Iterable[str] = ("PUT", "POST")) -> Callable[[str, str], bool]:
    """A FaultProxy rule: fail the first request of each method to each object whose path matches."""
    seen: set[tuple[str, str]] = set()
    methods = set(methods)
    regex = re.compile(path_pattern)

    def fail(method: str, path: str) -> bool:
        key = (method, path.split("?")[0])
        if method in methods and regex.search(key[1]) and key not in seen:
            seen.add(key)
            return True
        return False

    return fail
