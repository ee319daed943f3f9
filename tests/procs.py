"""A wagate gateway as a real child process, for tests that start, signal and kill it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from db.embedded import process_alive
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, port: int, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WAGATE_")}
        self.env = {**clean, "WAGATE_DATA_DIR": str(data_dir), "WAGATE_PORT": str(port), **env}
        self.proc: subprocess.Popen[str] | None = None
        self.stdout: list[str] = []

    def start(self, timeout: float = 60) -> float:
        self.reap()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            if "wagate is serving on" in line:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                break
        self.proc.kill()
        _, err = self.proc.communicate()
        raise AssertionError(f"server did not start:\n{''.join(self.stdout)}\n{err}")

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])

    def signal(self, sig: int, timeout: float = 10) -> tuple[int, float, str]:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"server did not stop within {timeout} s") from None
        return self.proc.returncode, time.monotonic() - started, err

    def reap(self) -> None:
        """Collect a process that ended (killed, say) and close its pipes."""
        if self.proc is not None and self.proc.poll() is not None:
            self.proc.communicate()
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def alive(pid: int) -> bool:
    return process_alive(pid)


def api(srv: Server, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    """One call to a gateway process's API, which must succeed; its JSON body (or {})."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.request(method, srv.base + path, headers=headers, timeout=30, **kw)
    assert resp.status_code < 300, resp.text
    return resp.json() if resp.content else {}


def wait(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something true (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
