"""`python run.py serve` as a real process, on the embedded PostgreSQL, as a new user runs it."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests  # type: ignore[import-untyped]

from tests.conftest import ROOT
from tests.procs import Server, alive, free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "var", free_port())
    yield srv
    srv.kill()
    pid_file = srv.data_dir / "pg" / "postmaster.pid"
    if pid_file.exists():  # never leave a PostgreSQL behind, even when a test failed
        pid = int(pid_file.read_text().splitlines()[0])
        if alive(pid):
            os.kill(pid, signal.SIGQUIT)


def test_serve_from_nothing_then_again_and_stop_cleanly(server: Server) -> None:
    server.start()
    banner = "".join(server.stdout)
    email = re.search(r"e-mail:\s+(\S+)", banner)
    password = re.search(r"password:\s+(\S+)", banner)
    assert email, banner
    assert password, banner
    assert email.group(1) == "admin@wagate.local"

    assert requests.get(f"{server.base}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{server.base}/readyz", timeout=5).status_code == 200
    login = requests.post(
        f"{server.base}/api/v1/auth/login",
        json={"email": email.group(1), "password": password.group(1)},
        timeout=10,
    )
    assert login.status_code == 200

    key = server.data_dir / "secret_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    initial = server.data_dir / "initial_admin_password"
    assert stat.S_IMODE(initial.stat().st_mode) == 0o600

    pg_pid = server.postmaster_pid()
    assert alive(pg_pid)
    code, took, err = server.signal(signal.SIGTERM)
    assert code == 0, err
    assert took < 10
    assert not alive(pg_pid), "the embedded PostgreSQL is still running"
    assert password.group(1) not in err, "the admin password reached the log"

    # Second start: same data, no new admin, the old password still works.
    server.stdout.clear()
    server.start()
    assert "First start" not in "".join(server.stdout)
    token = requests.post(
        f"{server.base}/api/v1/auth/login",
        json={"email": email.group(1), "password": password.group(1)},
        timeout=10,
    ).json()["access_token"]
    me = requests.get(
        f"{server.base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert me.json()["email"] == "admin@wagate.local"

    pg_pid = server.postmaster_pid()
    code, _, err = server.signal(signal.SIGINT)  # Ctrl-C
    assert code == 0, err
    assert not alive(pg_pid)


def test_admin_from_the_environment_and_a_second_serve_is_refused(
    server: Server, tmp_path: Path
) -> None:
    server.env["WAGATE_ADMIN_EMAIL"] = "boss@example.com"
    server.env["WAGATE_ADMIN_PASSWORD"] = "boss-password-1"
    server.start()
    assert "boss-password-1" not in "".join(server.stdout)
    login = requests.post(
        f"{server.base}/api/v1/auth/login",
        json={"email": "boss@example.com", "password": "boss-password-1"},
        timeout=10,
    )
    assert login.status_code == 200
    assert not (server.data_dir / "initial_admin_password").exists()

    second = subprocess.run(
        [sys.executable, "run.py", "serve"],
        cwd=ROOT,
        env={**server.env, "WAGATE_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "already using" in second.stderr
    # The first one is unharmed.
    assert requests.get(f"{server.base}/readyz", timeout=5).status_code == 200
    code, _, err = server.signal(signal.SIGTERM)
    assert code == 0, err


def test_create_user_cli_then_log_in(server: Server) -> None:
    created = subprocess.run(
        [
            sys.executable,
            "run.py",
            "create-user",
            "--email",
            "ops@example.com",
            "--password",
            "ops-password-1",
        ],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert "created operator ops@example.com" in created.stdout
    again = subprocess.run(
        [
            sys.executable,
            "run.py",
            "create-user",
            "--email",
            "OPS@example.com",
            "--password",
            "ops-password-1",
        ],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr
    # The CLI stopped the PostgreSQL it started.
    assert not (server.data_dir / "pg" / "postmaster.pid").exists()

    server.start()
    login = requests.post(
        f"{server.base}/api/v1/auth/login",
        json={"email": "ops@example.com", "password": "ops-password-1"},
        timeout=10,
    )
    assert login.status_code == 200
    code, _, err = server.signal(signal.SIGTERM)
    assert code == 0, err
