"""SIGKILL a real `run.py serve` while the Jira bridge is posting a chat's comments, one of them
already made in Jira but its answer not yet back: after a restart every comment is there once,
in the order of the messages."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessions.fake_server import FakeWhatsApp, Phone, SimMessage
from tests.fakes import jira as fj
from tests.fakes.jira import FakeJira
from tests.procs import Server, api, free_port, wait

pytestmark = pytest.mark.timeout(240)

ADMIN = {"email": "admin@wagate.local", "password": "admin-password-1"}
CUSTOMER = "+5215512345678"
MESSAGES = 30
MARKER = re.compile(r"\{anchor:wagate-m(\d+)\}")


class JiraThread:
    """The fake Jira on its own event loop in a thread (the gateway is another process)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeJira()
        self.url = self.call(self.fake.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def set(self, **values: Any) -> None:
        def apply() -> None:
            for name, value in values.items():
                setattr(self.fake, name, value)

        self.loop.call_soon_threadsafe(apply)

    def comments(self, key: str) -> list[str]:
        async def read() -> list[str]:
            return [c["body"] for c in self.fake.comments(key)]

        return list(self.call(read()))

    def close(self) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def jira() -> Iterator[JiraThread]:
    server = JiraThread()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[Server]:
    srv = Server(
        tmp_path / "var",
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_DRIVER="fake",
        WAGATE_ADMIN_PASSWORD=ADMIN["password"],
        WAGATE_WORKER_RESTART_MAX_SECONDS="0.5",
        WAGATE_LOG_LEVEL="warning",
        # A job's lease is 6 call timeouts (at least 10 s): the killed process's job is taken
        # over that long after the kill.
        WAGATE_JIRA_TIMEOUT_SECONDS="2",
        WAGATE_JIRA_BACKOFF_MAX_SECONDS="0.5",
    )
    yield srv
    srv.kill()


def text(body: str) -> SimMessage:
    return SimMessage.model_validate(
        {"type": "text", "from": CUSTOMER, "push_name": "Alice", "text": body}
    )


def test_sigkill_while_commenting_loses_and_duplicates_nothing(
    gateway: Server, jira: JiraThread
) -> None:
    gateway.start()
    token = api(gateway, "POST", "/api/v1/auth/login", json=ADMIN)["access_token"]
    sid = api(gateway, "POST", "/api/v1/sessions", token, json={"name": "support"})["id"]
    wait(
        lambda: api(gateway, "GET", f"/api/v1/sessions/{sid}", token)["state"] == "qr_required",
        30,
        "the QR",
    )
    phone = Phone(FakeWhatsApp(gateway.data_dir / "fake-wa"), sid)
    phone.scan()
    wait(
        lambda: api(gateway, "GET", f"/api/v1/sessions/{sid}", token)["state"] == "connected",
        30,
        "connected",
    )
    api(
        gateway,
        "PUT",
        "/api/v1/jira/connection",
        token,
        json={
            "base_url": jira.url,
            "auth_kind": "cloud",
            "email": fj.EMAIL,
            "token": fj.API_TOKEN,
            "project_key": "SUP",
            "auto_bridge_session_ids": [sid],
        },
    )
    assert api(gateway, "POST", "/api/v1/jira/test", token)["ok"]
    phone.send(text("first: my order never arrived"))
    key = wait(lambda: jira.fake.issue_keys(), 30, "the ticket")[0]

    # A slow Jira, so the chat's comments are still being posted when the gateway dies.
    jira.set(delay=0.15)
    phone.send(*[text(f"message {i}") for i in range(MESSAGES)])
    wait(lambda: len(jira.comments(key)) >= 5, 60, "5 comments", every=0.02)
    # The next comment is made in Jira but its answer never comes back: the kill lands while
    # the bridge still waits for it (before its 2 s timeout).
    jira.set(lose_answers=1, lose_seconds=30.0)
    made = len(jira.comments(key))
    wait(lambda: len(jira.comments(key)) > made, 10, "the comment whose answer is lost", 0.01)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGKILL)
    gateway.proc.wait(10)
    before = len(jira.comments(key))
    assert before < MESSAGES, "every comment was made before the kill; the test proves nothing"

    jira.set(delay=0.0, lose_answers=0)
    gateway.stdout.clear()
    gateway.start()
    wait(lambda: len(jira.comments(key)) >= MESSAGES, 90, f"{MESSAGES} comments")
    time.sleep(2.0)  # a duplicate would land by now
    bodies = jira.comments(key)
    assert [b.split("\n")[0] for b in bodies] == [
        f"[WhatsApp] Alice: message {i}" for i in range(MESSAGES)
    ]
    ids = [int(MARKER.findall(b)[0]) for b in bodies]
    assert ids == sorted(set(ids))
    assert jira.fake.issue_keys() == [key]
    tickets = api(gateway, "GET", "/api/v1/jira/tickets", token)["items"]
    assert [(t["issue_key"], t["state"]) for t in tickets] == [(key, "open")]
    status = api(gateway, "GET", "/api/v1/jira/status", token)
    assert (status["jobs_waiting"], status["jobs_failed"]) == (0, 0)
