"""A webhook receiver on 127.0.0.1 for tests: records every request and answers as told
(200, 500, 410, or hang), in the test's event loop or in a thread of its own (for tests that
block on a gateway subprocess)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (the README's example)."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + expected.hexdigest(), signature)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None = None  # the status we answered, None while hanging / never
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def delivery(self) -> str:
        return self.headers["X-Wagate-Delivery"]


class Receiver:
    """Thread-based HTTP server. `mode[path]` is an int status or "hang"; `fail_first[path]`
    answers 500 to that many requests before the mode applies."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.mode: dict[str, int | str] = {}
        self.fail_first: dict[str, int] = {}
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                item = Received(self.path, dict(self.headers.items()), self.rfile.read(size))
                with receiver._lock:
                    receiver.received.append(item)
                    left = receiver.fail_first.get(self.path, 0)
                    if left:
                        receiver.fail_first[self.path] = left - 1
                    mode = 500 if left else receiver.mode.get(self.path, 200)
                if mode == "hang":
                    receiver.release.wait(120)
                    self.close_connection = True
                    return  # never answered
                status = int(mode)
                item.answered = status
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def acked(self, path: str) -> list[Received]:
        return [r for r in self.at(path) if r.answered is not None and 200 <= r.answered < 300]
