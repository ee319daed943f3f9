"""Several gateway nodes on one PostgreSQL and one Redis: sessions spread, a killed node's
sessions come back on the others, nothing is lost or duplicated, no session runs twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from sessions.fake_server import FakeWhatsApp, Phone
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer
from tests.procs import Server, free_port
from tests.sessions_helpers import text
from tests.test_realtime import redis_url  # noqa: F401  (the fixture)

SESSIONS = 30
LEASE_SECONDS = 9


def node(tmp_path: Path, name: str, db_url: str, redis: str) -> Server:
    return Server(
        tmp_path / name,
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_REDIS_URL=redis,
        WAGATE_SHARED_DIR=str(tmp_path / "shared"),
        WAGATE_LEASE_SECONDS=str(LEASE_SECONDS),
        WAGATE_DRIVER="fake",
        WAGATE_SECRET_KEY="one-secret-key-for-every-node",
        WAGATE_ADMIN_EMAIL=ADMIN_EMAIL,
        WAGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        WAGATE_LOG_LEVEL="warning",
        WAGATE_SPOOL_SYNC="flush",
        WAGATE_SESSIONS_PER_WORKER="10",
        WAGATE_QR_FIRST_SECONDS="120",
        WAGATE_MAX_SESSIONS_PER_USER="50",
    )


class Cluster:
    def __init__(self, nodes: dict[str, Server], http: aiohttp.ClientSession, token: str):
        self.nodes = nodes
        self.http = http
        self.token = token
        self.dead: set[str] = set()

    def live(self) -> dict[str, Server]:
        return {k: v for k, v in self.nodes.items() if k not in self.dead}

    async def get(self, name: str, path: str) -> Any:
        async with self.http.get(self.nodes[name].base + path, headers=bearer(self.token)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def running_where(self) -> dict[str, set[int]]:
        """The sessions each live node runs in its own worker processes (from its API)."""
        found: dict[str, set[int]] = {}
        for name in self.live():
            with contextlib.suppress(aiohttp.ClientError):
                sessions = (await self.get(name, "/api/v1/sessions"))["items"]
                found[name] = {s["id"] for s in sessions if s["worker"] is not None}
        return found


async def holders(db_url: str) -> dict[int, str]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT session_id, node_id FROM session_leases WHERE expires_at > now()"
        )
        return {int(r["session_id"]): str(r["node_id"]) for r in rows}
    finally:
        await conn.close()


async def states(cluster: Cluster) -> dict[int, str]:
    sessions = (await cluster.get(next(iter(cluster.live())), "/api/v1/sessions"))["items"]
    return {s["id"]: s["state"] for s in sessions}


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.mark.timeout(420)
async def test_three_nodes_share_sessions_and_survive_a_killed_node(
    tmp_path: Path,
    db_url: str,
    redis_url: str,  # noqa: F811
) -> None:
    names = ("a", "b", "c")
    servers = {n: node(tmp_path, n, db_url, redis_url) for n in names}
    overlaps: list[tuple[float, dict[str, set[int]]]] = []
    monitor: asyncio.Task[None] | None = None
    try:
        for server in servers.values():
            await asyncio.to_thread(server.start)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{servers['a'].base}/api/v1/auth/login",
                json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            ) as resp:
                token = (await resp.json())["access_token"]
            cluster = Cluster(servers, http, token)

            # 30 accounts, added through different nodes.
            sids: list[int] = []
            for i in range(SESSIONS):
                entry = servers[names[i % 3]].base
                async with http.post(
                    f"{entry}/api/v1/sessions", json={"name": f"s{i}"}, headers=bearer(token)
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    sids.append(int((await resp.json())["id"]))

            # They spread: every node runs about a third.
            async def spread() -> dict[str, int] | None:
                held = await holders(db_url)
                counts: dict[str, int] = {}
                for node_id in held.values():
                    counts[node_id] = counts.get(node_id, 0) + 1
                if len(held) == SESSIONS and len(counts) == 3 and max(counts.values()) <= 11:
                    return counts
                return None

            await until(spread, 60, "sessions spread over three nodes")

            async def no_overlap() -> None:
                while True:
                    where = await cluster.running_where()
                    seen: dict[int, str] = {}
                    for name, running in where.items():
                        for sid in running:
                            if sid in seen:
                                overlaps.append((time.monotonic(), where))
                            seen[sid] = name
                    await asyncio.sleep(0.25)

            monitor = asyncio.create_task(no_overlap())

            # Link every account (the phones scan whatever node shows their QR).
            fake = FakeWhatsApp(tmp_path / "shared" / "fake-wa")

            async def all_in(state: str) -> bool:
                now = await states(cluster)
                return all(now.get(sid) == state for sid in sids)

            await until(lambda: all_in("qr_required"), 60, "QR codes")
            for sid in sids:
                Phone(fake, sid).scan()
            await until(lambda: all_in("connected"), 60, "every account connected")

            # Traffic, with node b killed in the middle of it.
            sent: list[str] = []

            def burst(round_: int) -> None:
                for sid in sids:
                    body = f"msg s{sid} r{round_}"
                    Phone(fake, sid).send(text(f"+52155{sid:08d}", body, push_name=f"C{sid}"))
                    sent.append(body)

            for round_ in range(3):
                burst(round_)
                await asyncio.sleep(0.2)
            b_id = await node_id_of(cluster, "b")
            on_b = sorted(sid for sid, n in (await holders(db_url)).items() if n == b_id)
            assert on_b, "b ran no session"
            servers["b"].kill()  # SIGKILL: no hand-over, its leases just stop being renewed
            killed_at = time.monotonic()
            cluster.dead.add("b")
            for round_ in range(3, 6):
                burst(round_)
                await asyncio.sleep(0.2)

            async def taken_over() -> bool:
                held = await holders(db_url)
                now = await states(cluster)
                return all(
                    held.get(sid) not in (None, b_id) and now.get(sid) == "connected"
                    for sid in on_b
                )

            await until(taken_over, 30, "b's sessions running on a and c")
            takeover = time.monotonic() - killed_at
            assert takeover < 30

            # Every message stored exactly once.
            async def stored() -> list[Any] | None:
                conn = await asyncpg.connect(db_url)
                try:
                    rows = await conn.fetch(
                        "SELECT text_content, count(*) AS n FROM messages "
                        "WHERE text_content LIKE 'msg s%' GROUP BY 1"
                    )
                finally:
                    await conn.close()
                return rows if len(rows) == len(sent) else None

            rows = await until(stored, 60, "every message stored")
            assert {r["text_content"] for r in rows} == set(sent)
            assert all(r["n"] == 1 for r in rows), [r for r in rows if r["n"] != 1]

            # A send through a node that does not run the session reaches the one that does.
            held = await holders(db_url)
            a_id = await node_id_of(cluster, "a")
            target = next(sid for sid in sids if held[sid] == a_id)
            chats = await cluster.get("c", f"/api/v1/conversations?session_id={target}")
            chat = chats["items"][0]
            async with http.post(
                f"{servers['c'].base}/api/v1/conversations/{chat['id']}/messages",
                json={"text": "sent through c"},
                headers=bearer(token),
            ) as resp:
                assert resp.status == 202, await resp.text()

            async def delivered() -> bool:
                return any(
                    item.get("message", {}).get("conversation") == "sent through c"
                    for item in Phone(fake, target).sent()
                )

            await until(delivered, 20, "the send through c delivered by a")

            # A graceful stop hands sessions over at once (no lease expiry to wait for).
            c_id = await node_id_of(cluster, "c")
            on_c = sorted(sid for sid, n in (await holders(db_url)).items() if n == c_id)
            stop_started = time.monotonic()
            code, _, _ = await asyncio.to_thread(servers["c"].signal, signal.SIGTERM, 30)
            assert code == 0
            cluster.dead.add("c")

            async def moved_to_a() -> bool:
                held = await holders(db_url)
                return all(held.get(sid) == a_id for sid in on_c)

            await until(moved_to_a, LEASE_SECONDS * 0.9, "c's sessions on a after its stop")
            handover = time.monotonic() - stop_started
            await until(lambda: all_in("connected"), 60, "every account connected on a")
    finally:
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        for server in servers.values():
            server.kill()
            server.reap()
    assert not overlaps, f"a session ran on two nodes at once: {overlaps[:3]}"
    print(f"takeover after SIGKILL: {takeover:.1f} s; hand-over on SIGTERM: {handover:.1f} s")


async def node_id_of(cluster: Cluster, name: str) -> str:
    return str((await cluster.get(name, "/api/v1/nodes"))["node_id"])
