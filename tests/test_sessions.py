"""WhatsApp Web sessions through real worker processes and the fake WhatsApp."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from gateway.app import create_app
from gateway.keys import SESSIONS
from gateway.settings import Settings
from sessions.fake_server import SimMessage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.sessions_helpers import (
    Client,
    create_session,
    fast_settings,
    link,
    phone,
    record,
    session_json,
    supervisor,
    text,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url)


@pytest.fixture
async def token(client: Client) -> str:
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def count_messages(db_url: str, session_id: int) -> tuple[int, int]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT wa_message_id) AS d FROM messages "
            "WHERE session_id = $1",
            session_id,
        )
        assert row is not None
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


# -- linking ----------------------------------------------------------------------------------


async def test_link_by_qr_end_to_end(client: Client, token: str, settings: Settings) -> None:
    events = record(client)
    sid = await create_session(client, token)
    await wait_state(client, token, sid, "qr_required")
    resp = await client.get(f"/api/v1/sessions/{sid}/qr", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    assert body["qr"].startswith("data:image/png;base64,")
    png = base64.b64decode(body["qr"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    # The phone scans exactly the code the session shows.
    shown = phone(settings, sid).current_qr()
    assert shown
    phone(settings, sid).scan(phone="+5215512345678", qr=shown)
    linked = await wait_state(client, token, sid, "connected")
    assert linked["phone"] == "5215512345678"
    assert linked["jid"].startswith("5215512345678:")  # the device JID, which resuming needs
    assert linked["worker"]["pid"] > 0
    assert linked["worker"]["rss_bytes"] > 0
    states = events.states(sid)
    assert states[0] == "starting"
    assert "qr_required" in states
    assert states[-1] == "connected"
    # `session-ready` follows `session-state` (a publish of its own, maybe a moment later).
    await wait_for(
        _async(lambda: any(e.event == "session-ready" for e in events.events)),
        what="session-ready",
    )
    again = await client.get(f"/api/v1/sessions/{sid}/qr", headers=bearer(token))
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "already_connected"


async def test_link_by_pairing_code(client: Client, token: str, settings: Settings) -> None:
    sid = await create_session(client, token)
    await wait_state(client, token, sid, "qr_required")
    resp = await client.post(
        f"/api/v1/sessions/{sid}/pair-phone",
        json={"phone": "+52 1 55 1234 5678"},
        headers=bearer(token),
    )
    assert resp.status == 200, await resp.text()
    code = (await resp.json())["code"]
    assert len(code) == 9
    assert code[4] == "-"
    phone(settings, sid).enter_code(code)
    linked = await wait_state(client, token, sid, "connected")
    assert linked["phone"] == "5215512345678"


@pytest.mark.parametrize("bad", ["12", "+0123456789", "hello", "+52155123456789012345"])
async def test_pair_phone_rejects_invalid_numbers(client: Client, token: str, bad: str) -> None:
    sid = await create_session(client, token)
    resp = await client.post(
        f"/api/v1/sessions/{sid}/pair-phone", json={"phone": bad}, headers=bearer(token)
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["details"][0]["loc"] == ["phone"]


async def test_qr_rotates_then_expires_and_the_worker_stops(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(tmp_path, db_url, qr_first_seconds=1.0, qr_next_seconds=0.7)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await create_session(client, token)
    await wait_state(client, token, sid, "qr_required")
    pid = supervisor(client).worker_pid(sid)
    assert pid is not None
    seen: list[str] = []

    async def rotated() -> bool:
        resp = await client.get(f"/api/v1/sessions/{sid}/qr", headers=bearer(token))
        if resp.status == 200:
            qr = (await resp.json())["qr"]
            if not seen or seen[-1] != qr:
                seen.append(qr)
        return len(seen) >= 2

    await wait_for(rotated, timeout=5, what="a second QR code")
    expired = await wait_state(client, token, sid, "qr_expired", timeout=10)
    assert expired["last_error"] == "the QR code was not scanned in time"
    await wait_for(
        lambda: asyncio.sleep(0, result=not psutil.pid_exists(pid) or _zombie(pid)),
        timeout=10,
        what="the pairing worker to exit",
    )
    resp = await client.get(f"/api/v1/sessions/{sid}/qr", headers=bearer(token))
    assert resp.status == 409
    # The operator can try again.
    start = await client.post(f"/api/v1/sessions/{sid}/start", headers=bearer(token))
    assert start.status == 200
    await wait_state(client, token, sid, "qr_required")


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_compat_qr_route_shape(client: Client, token: str, settings: Settings) -> None:
    resp = await client.get("/api/whatsapp/qr")
    assert resp.status == 401
    resp = await client.get("/api/whatsapp/qr", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"success", "message", "connected", "data"}
    assert body["success"] is True
    assert body["connected"] is False
    assert body["data"]["qr"].startswith("data:image/png;base64,")
    # Cached for its validity: the same code twice.
    again = await (await client.get("/api/whatsapp/qr", headers=bearer(token))).json()
    assert again["data"]["qr"] == body["data"]["qr"]
    sid = (await (await client.get("/api/v1/sessions", headers=bearer(token))).json())["items"][0][
        "id"
    ]
    phone(settings, sid).scan()
    await wait_state(client, token, sid, "connected")
    done = await (
        await client.get(f"/api/whatsapp/qr?sessionId={sid}", headers=bearer(token))
    ).json()
    assert done == {
        "success": True,
        "message": "already connected",
        "connected": True,
        "data": {"qr": None},
    }


# -- staying linked ---------------------------------------------------------------------------


async def test_connected_session_survives_a_gateway_restart_without_qr(
    aiohttp_client: Any, settings: Settings, db_url: str
) -> None:
    first = await aiohttp_client(create_app(settings))
    token = await login(first, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(first, token, settings)
    phone(settings, sid).send(text("+5215511111111", "before restart"))
    await wait_for(lambda: _has_messages(db_url, sid, 1), what="the message before the restart")
    old_pid = supervisor(first).worker_pid(sid)
    await first.close()
    assert old_pid is not None
    assert not psutil.pid_exists(old_pid) or _zombie(old_pid)

    # Messages sent while the gateway is down wait at WhatsApp and arrive afterwards.
    phone(settings, sid).send(text("+5215511111111", "while down"))
    second = await aiohttp_client(create_app(settings))
    events = record(second)
    token = await login(second, ADMIN_EMAIL, ADMIN_PASSWORD)
    await wait_state(second, token, sid, "connected")
    assert "qr_required" not in events.states(sid)
    assert supervisor(second).qr(sid) is None
    await wait_for(lambda: _has_messages(db_url, sid, 2), what="the message sent while down")


async def _has_messages(db_url: str, sid: int, n: int) -> bool:
    total, distinct = await count_messages(db_url, sid)
    assert total == distinct
    return total >= n


async def test_stop_then_start_resumes_without_qr(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    resp = await client.post(f"/api/v1/sessions/{sid}/stop", headers=bearer(token))
    assert resp.status == 200
    stopped = await resp.json()
    assert stopped["state"] == "stopped"
    assert stopped["worker"] is None
    events = record(client)
    resp = await client.post(f"/api/v1/sessions/{sid}/start", headers=bearer(token))
    assert resp.status == 200
    await wait_state(client, token, sid, "connected")
    assert "qr_required" not in events.states(sid)


async def test_killing_one_of_three_workers_loses_and_duplicates_nothing(
    client: Client, token: str, settings: Settings, db_url: str
) -> None:
    # Recorded from the start: a state event is published just after its row is committed, so
    # the last "connected" of linking may arrive after link() has seen it in the table.
    events = record(client)
    sids = [await link(client, token, settings, name=f"s{i}") for i in range(3)]
    pids = {sid: supervisor(client).worker_pid(sid) for sid in sids}
    linked = {sid: len(events.states(sid)) for sid in sids}
    per_session = 400
    victim = sids[1]

    async def feed(sid: int) -> None:
        for batch in range(8):
            phone(settings, sid).send(
                *[
                    text(f"+52155{sid:04d}{i:04d}", f"message {batch}-{i}")
                    for i in range(per_session // 8)
                ]
            )
            await asyncio.sleep(0.15)

    feeders = [asyncio.ensure_future(feed(sid)) for sid in sids]
    await asyncio.sleep(0.5)
    victim_pid = pids[victim]
    assert victim_pid is not None
    os.kill(victim_pid, signal.SIGKILL)
    await asyncio.gather(*feeders)

    for sid in sids:
        await wait_for(
            lambda sid=sid: _has_messages(db_url, sid, per_session),
            timeout=60,
            what=f"all messages of session {sid}",
        )
    await asyncio.sleep(0.5)  # anything duplicated would land by now
    for sid in sids:
        assert await count_messages(db_url, sid) == (per_session, per_session)
    # The victim was restarted; the others never noticed.
    assert supervisor(client).worker_pid(victim) not in (None, victim_pid)
    await wait_state(client, token, victim, "connected")
    assert "reconnecting" in events.states(victim)
    for sid in sids:
        if sid != victim:
            assert supervisor(client).worker_pid(sid) == pids[sid]
            states = events.states(sid)
            # Linking ends in "connected"; after it, nothing: the others never noticed.
            assert "connected" in states, states
            after = states[states.index("connected") + 1 :]
            assert after == [], (states, linked[sid])
    body = await session_json(client, token, victim)
    assert body["worker"]["restarts"] == 1


async def test_a_worker_that_stops_answering_is_killed_and_restarted(
    client: Client, token: str, settings: Settings, db_url: str
) -> None:
    sid = await link(client, token, settings)
    pid = supervisor(client).worker_pid(sid)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive but frozen: no heartbeat answers
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=supervisor(client).worker_pid(sid) not in (None, pid)),
            timeout=20,
            what="a new worker",
        )
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    await wait_state(client, token, sid, "connected")
    phone(settings, sid).send(text("+5215512345678", "after the freeze"))
    await wait_for(lambda: _has_messages(db_url, sid, 1), what="a message after the restart")


async def test_a_worker_past_its_lease_fence_exits_and_the_node_takes_the_session_back(
    client: Client, token: str, settings: Settings, db_url: str
) -> None:
    sid = await link(client, token, settings)
    sup = supervisor(client)
    directory = client.server.app[SESSIONS]
    pid = sup.worker_pid(sid)
    assert pid is not None
    fenced: list[list[int]] = []
    tell_directory = sup.on_fenced
    assert tell_directory is not None

    async def heard(session_ids: list[int]) -> None:
        fenced.append(session_ids)
        await tell_directory(session_ids)

    sup.on_fenced = heard
    # No lease round may extend the fence meanwhile: as if this node could not renew.
    async with directory._tick_lock:
        sup.fence_until(time.monotonic() + 0.3)
        await wait_for(
            lambda: asyncio.sleep(0, result=_zombie(pid) or not psutil.pid_exists(pid)),
            timeout=5,
            what="the worker to end itself at the fence",
        )
        await wait_for(lambda: asyncio.sleep(0, result=bool(fenced)), what="the fenced report")
        assert fenced == [[sid]]
        assert sup.worker_pid(sid) is None  # not restarted here on its own
        assert sid not in directory.held
    # The lease is still this node's: the next round takes the session back, no QR needed.
    await wait_for(
        lambda: asyncio.sleep(0, result=sup.worker_pid(sid) not in (None, pid)),
        timeout=20,
        what="the session back in a new worker",
    )
    await wait_state(client, token, sid, "connected")
    phone(settings, sid).send(text("+5215512345678", "after the fence"))
    await wait_for(lambda: _has_messages(db_url, sid, 1), what="a message after the fence")


# -- what the phone and WhatsApp do -----------------------------------------------------------


async def test_unlinked_from_the_phone_is_logged_out_without_retry(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    pid = supervisor(client).worker_pid(sid)
    phone(settings, sid).control("logout")
    body = await wait_state(client, token, sid, "logged_out")
    assert body["jid"] is None
    assert body["desired_state"] == "stopped"
    await asyncio.sleep(1.0)
    assert (await session_json(client, token, sid))["state"] == "logged_out"
    assert pid is not None
    assert not psutil.pid_exists(pid) or _zombie(pid)


async def test_temporary_ban_shows_until_when(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    phone(settings, sid).control("ban", seconds=3600)
    body = await wait_state(client, token, sid, "banned")
    assert body["banned_until"] is not None
    assert "temporary ban" in body["last_error"]


async def test_a_short_ban_ends_and_the_session_comes_back(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    phone(settings, sid).control("ban", seconds=2)
    await wait_state(client, token, sid, "banned")
    await wait_state(client, token, sid, "connected", timeout=15)


async def test_stream_replaced_stops_without_fighting(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    events = record(client)
    phone(settings, sid).control("stream_replaced")
    body = await wait_state(client, token, sid, "replaced")
    assert "another client" in body["last_error"]
    await asyncio.sleep(1.0)
    assert events.states(sid) == ["replaced"]


async def test_dropped_connection_reconnects_by_itself(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    events = record(client)
    phone(settings, sid).control("disconnect")
    await wait_for(
        lambda: asyncio.sleep(0, result=events.states(sid)[-2:] == ["reconnecting", "connected"]),
        what="reconnecting then connected",
    )


async def test_logout_and_delete_from_the_api(
    client: Client, token: str, settings: Settings, db_url: str
) -> None:
    sid = await link(client, token, settings)
    resp = await client.post(f"/api/v1/sessions/{sid}/logout", headers=bearer(token))
    assert resp.status == 200
    assert (await resp.json())["state"] == "logged_out"
    device = phone(settings, sid).server.device(f"wagate-{sid}")
    assert device is not None
    assert device["linked"] is False
    sid2 = await link(client, token, settings, name="second")
    resp = await client.delete(f"/api/v1/sessions/{sid2}", headers=bearer(token))
    assert resp.status == 204
    assert (await client.get(f"/api/v1/sessions/{sid2}", headers=bearer(token))).status == 404
    device = phone(settings, sid2).server.device(f"wagate-{sid2}")
    assert device is not None
    assert device["linked"] is False


async def test_session_limit_per_user(aiohttp_client: Any, tmp_path: Path, db_url: str) -> None:
    settings = fast_settings(tmp_path, db_url, max_sessions_per_user=2)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    results = await asyncio.gather(
        *[
            client.post("/api/v1/sessions", json={"name": f"n{i}"}, headers=bearer(token))
            for i in range(4)
        ]
    )
    assert sorted(r.status for r in results) == [201, 201, 409, 409]
    refused = next(r for r in results if r.status == 409)
    assert (await refused.json())["error"]["code"] == "session_limit"


async def test_operators_only_see_their_own_sessions(
    client: Client, token: str, settings: Settings
) -> None:
    for email in ("a@example.com", "b@example.com"):
        resp = await client.post(
            "/api/v1/users",
            json={"email": email, "password": "password-123"},
            headers=bearer(token),
        )
        assert resp.status == 201
    token_a = await login(client, "a@example.com", "password-123")
    token_b = await login(client, "b@example.com", "password-123")
    sid = await create_session(client, token_a)
    await wait_state(client, token_a, sid, "qr_required")

    for method, path, body in [
        ("GET", f"/api/v1/sessions/{sid}", None),
        ("GET", f"/api/v1/sessions/{sid}/qr", None),
        ("POST", f"/api/v1/sessions/{sid}/start", None),
        ("POST", f"/api/v1/sessions/{sid}/stop", None),
        ("POST", f"/api/v1/sessions/{sid}/logout", None),
        ("POST", f"/api/v1/sessions/{sid}/pair-phone", {"phone": "+5215512345678"}),
        ("DELETE", f"/api/v1/sessions/{sid}", None),
        ("POST", f"/api/v1/sim/sessions/{sid}/scan", {}),
    ]:
        resp = await client.request(method, path, json=body, headers=bearer(token_b))
        assert resp.status == 404, (method, path, resp.status)
        assert (await resp.json())["error"]["code"] == "not_found"
    compat = await client.get(f"/api/whatsapp/qr?sessionId={sid}", headers=bearer(token_b))
    assert compat.status == 404
    listing = await (await client.get("/api/v1/sessions", headers=bearer(token_b))).json()
    assert listing["items"] == []
    # A's session is untouched, and the admin sees it.
    assert (await session_json(client, token_a, sid))["state"] == "qr_required"
    admin = await (await client.get("/api/v1/sessions", headers=bearer(token))).json()
    assert [s["id"] for s in admin["items"]] == [sid]


async def test_sessions_need_auth_and_ids_must_be_numbers(client: Client, token: str) -> None:
    assert (await client.get("/api/v1/sessions")).status == 401
    resp = await client.get("/api/v1/sessions/abc", headers=bearer(token))
    assert resp.status == 404
    resp = await client.post("/api/v1/sessions", json={"name": ""}, headers=bearer(token))
    assert resp.status == 400


async def test_metrics_report_sessions_and_worker_memory(
    client: Client, token: str, settings: Settings
) -> None:
    sid = await link(client, token, settings)
    text_ = await (await client.get("/metrics")).text()
    assert 'wagate_sessions{state="connected"} 1.0' in text_
    assert f'wagate_session_worker_rss_bytes{{session="{sid}"}}' in text_
    assert f'wagate_session_worker_pss_bytes{{session="{sid}"}}' in text_


async def test_readyz_includes_the_supervisor(client: Client) -> None:
    body = await (await client.get("/readyz")).json()
    assert body["checks"] == {"database": "ok", "supervisor": "ok"}


async def test_sim_routes_exist_only_in_fake_mode(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(tmp_path, db_url, driver="neonize")
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert (await client.get("/sim")).status == 404
    resp = await client.post("/api/v1/sim/sessions/1/scan", json={}, headers=bearer(token))
    assert resp.status == 404
    doc = await (await client.get("/openapi.json")).json()
    assert not [p for p in doc["paths"] if "/sim/" in p]


async def test_sim_rejects_incomplete_messages(client: Client, token: str) -> None:
    sid = await create_session(client, token)
    resp = await client.post(
        f"/api/v1/sim/sessions/{sid}/messages",
        json={"messages": [{"type": "location", "from": "+5215512345678"}]},
        headers=bearer(token),
    )
    assert resp.status == 400
    assert "lat" in str(await resp.json())


def test_sim_message_model_requires_fields() -> None:
    with pytest.raises(ValueError, match="target_id"):
        SimMessage.model_validate({"type": "reaction", "from": "+52155"})


async def test_several_sessions_share_a_worker_when_configured(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(tmp_path, db_url, sessions_per_worker=3)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sids = [await link(client, token, settings, name=f"s{i}") for i in range(3)]
    pids = {supervisor(client).worker_pid(sid) for sid in sids}
    assert len(pids) == 1
    body = await session_json(client, token, sids[0])
    assert body["worker"]["sessions_in_worker"] == 3
    for sid in sids:
        phone(settings, sid).send(text("+5215512345678", f"to {sid}"))
    for sid in sids:
        await wait_for(lambda sid=sid: _has_messages(db_url, sid, 1), what=f"message of {sid}")
    # Shared fate: the worker dies, all three come back together.
    (pid,) = pids
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for sid in sids:
        await wait_for(
            lambda sid=sid: asyncio.sleep(
                0, result=supervisor(client).worker_pid(sid) not in (None, pid)
            ),
            what="the restarted worker",
        )
        await wait_state(client, token, sid, "connected")
    # Stopping one leaves the others running in the same process.
    await client.post(f"/api/v1/sessions/{sids[0]}/stop", headers=bearer(token))
    survivor = supervisor(client).worker_pid(sids[1])
    phone(settings, sids[1]).send(text("+5215512345678", "still here"))
    await wait_for(lambda: _has_messages(db_url, sids[1], 2), what="a message after the stop")
    assert supervisor(client).worker_pid(sids[2]) == survivor


async def test_sim_page_is_served_in_fake_mode(client: Client) -> None:
    resp = await client.get("/sim")
    assert resp.status == 200
    assert "Simulated phone" in await resp.text()


def test_sim_cli_acts_as_the_phone(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGATE_")} | {
        "WAGATE_DATA_DIR": str(tmp_path),
        "WAGATE_DRIVER": "fake",
    }

    def sim(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "run.py", "sim", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = sim("scan", "4")
    assert refused.returncode == 1
    assert "shows no QR code" in refused.stderr
    sent = sim("send", "4", "--from", "+5215512345678", "--text", "hola")
    assert sent.returncode == 0, sent.stderr
    assert "queued message" in sent.stdout
    from sessions.fake_server import FakeWhatsApp

    items, _ = FakeWhatsApp(tmp_path / "fake-wa").read_inbox("wagate-4", 0)
    assert [(i["kind"], i["text"], i["from"]) for i in items] == [
        ("message", "hola", "5215512345678")
    ]


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run
