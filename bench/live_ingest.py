"""Live ingest: WhatsApp messages through the real path, from the driver event to the committed
row, with the fake WhatsApp standing in for the network.

Path measured: fake phone queue -> fake client (real neonize protobufs) -> worker's spool hook
-> adapter -> IPC frame -> supervisor -> group commit in PostgreSQL -> event log and bus. The
supervisor runs in this process with a real worker process and a real PostgreSQL.

- Throughput: a backlog of N messages is queued at once; messages/s from the first to the last
  committed row.
- Latency at a fixed rate (1,000 msg/s by default): each message carries its emission time (the
  moment the fake client hands it to neonize's dispatcher); the bus subscriber notes when its
  row is committed and published. p50/p90/p99/max.
- In the same run, for scale: raw asyncpg `executemany` of the same rows into the same table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import BenchServer
from db import sessions as sessions_db
from db import users as users_db
from db.pool import create_pool
from sessions.fake_server import FakeWhatsApp, Phone, SimMessage
from sessions.supervisor import SessionSupervisor, SupervisorConfig, device_store_url

TARGET_RATE = 5000.0
TARGET_P99_MS = 50.0


def messages(count: int, tag: str) -> list[SimMessage]:
    return [
        SimMessage.model_validate(
            {
                "type": "text",
                "from": f"+5215{i % 500:09d}",
                "text": f"live message {i} with a little text to make it realistic",
                "id": f"3EB0{tag}{i:09d}",
                "push_name": f"Customer {i % 500}",
            }
        )
        for i in range(count)
    ]


class Committed:
    """Bus subscriber: when each message's row was committed and published."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def __call__(self, owner: int, sid: int | None, items: list[tuple[str, Any]]) -> None:
        now = time.time()
        for name, payload in items:
            if name == "message-new":
                self.at[payload["wa_message_id"]] = now
                self.sent[payload["wa_message_id"]] = datetime.fromisoformat(
                    payload["sent_at"]
                ).timestamp()
        self.changed.set()


async def wait_count(committed: Committed, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(committed.at) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(committed.at)} of {n} messages committed")
        committed.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(committed.changed.wait(), 1.0)


async def linked_session(
    pool: asyncpg.Pool, root: Path, url: str, committed: Committed
) -> tuple[SessionSupervisor, Phone, int]:
    user = await users_db.create(pool, email=f"{uuid.uuid4().hex}@bench", password_hash="x")
    assert user is not None
    session = await sessions_db.create(pool, owner_id=user.id, name="bench")
    supervisor = SessionSupervisor(
        pool,
        SupervisorConfig(
            driver="fake",
            data_dir=root,
            store_url=device_store_url(url),
            spool_sync="fsync",
            log_level="warning",
        ),
        emit_many=committed,
    )
    await supervisor.start()
    phone = Phone(FakeWhatsApp(root / "fake-wa"), session.id)
    deadline = time.monotonic() + 30
    while supervisor.states.get(session.id) != "qr_required":
        if time.monotonic() > deadline:
            raise TimeoutError("no QR")
        await asyncio.sleep(0.05)
    phone.scan()
    while supervisor.states.get(session.id) != "connected":
        if time.monotonic() > deadline:
            raise TimeoutError("not connected")
        await asyncio.sleep(0.05)
    return supervisor, phone, session.id


async def throughput(phone: Phone, committed: Committed, count: int) -> dict[str, float]:
    batch = messages(count, "T")
    base = len(committed.at)
    started = time.perf_counter()
    for i in range(0, count, 1000):
        phone.send(*batch[i : i + 1000])
    await wait_count(committed, base + count, timeout=600)
    seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "per_second": count / seconds}


async def latency(
    phone: Phone, committed: Committed, rate: float, seconds: float
) -> dict[str, Any]:
    total = int(rate * seconds)
    batch = messages(total, "L")
    tick = 0.02
    per_tick = max(1, int(rate * tick))
    base = len(committed.at)
    started = time.perf_counter()
    for i in range(0, total, per_tick):
        phone.send(*batch[i : i + per_tick])
        target = started + (i + per_tick) / rate
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
    await wait_count(committed, base + total, timeout=120)
    ids = [m.id for m in batch if m.id]
    lat = sorted((committed.at[i] - committed.sent[i]) * 1000 for i in ids)
    q = statistics.quantiles(lat, n=100)
    return {
        "rate": rate,
        "messages": total,
        "p50_ms": q[49],
        "p90_ms": q[89],
        "p99_ms": q[98],
        "max_ms": lat[-1],
    }


async def executemany(url: str, count: int) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        user = await users_db.create(conn, email=f"{uuid.uuid4().hex}@em", password_hash="x")
        assert user is not None
        session = await sessions_db.create(conn, owner_id=user.id, name="em", run=False)
        conv = await conn.fetchval(
            "INSERT INTO conversations (session_id, external_id) VALUES ($1, 'x@s.whatsapp.net') "
            "RETURNING id",
            session.id,
        )
        now = datetime.now(UTC)
        rows = [
            (session.id, conv, f"EM{i:09d}", "inbound", "user", "text", f"live message {i}", now)
            for i in range(count)
        ]
        started = time.perf_counter()
        await conn.executemany(
            "INSERT INTO messages (session_id, conversation_id, wa_message_id, direction, "
            "sender_type, message_type, text_content, sent_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (session_id, wa_message_id) WHERE wa_message_id IS NOT NULL DO NOTHING",
            rows,
        )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"messages": count, "seconds": seconds, "per_second": count / seconds}


async def run_async(quick: bool) -> dict[str, Any]:
    count = 10_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="wagate-live-") as tmp:
        root = Path(tmp)
        async with BenchServer(root) as server:
            url = await server.database("live")
            pool = await create_pool(url, min_size=2, max_size=10)
            committed = Committed()
            supervisor, phone, _ = await linked_session(pool, root / "var", url, committed)
            try:
                rate = await throughput(phone, committed, count)
                steady = await latency(phone, committed, 1000.0, 5.0 if quick else 20.0)
            finally:
                await supervisor.stop()
                await pool.close()
            raw = await executemany(url, count)
    return {
        "throughput": rate,
        "latency_at_1000": steady,
        "executemany": raw,
        "targets": {"per_second": TARGET_RATE, "p99_ms": TARGET_P99_MS},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(run_async(args.quick))


def report(result: dict[str, Any]) -> str:
    t, lat, raw = result["throughput"], result["latency_at_1000"], result["executemany"]
    ok_rate = "meets" if t["per_second"] >= TARGET_RATE else "MISSES"
    ok_p99 = "meets" if lat["p99_ms"] <= TARGET_P99_MS else "MISSES"
    return "\n".join(
        [
            "## Live ingest (fake WhatsApp -> worker -> supervisor -> PostgreSQL)",
            "",
            "| measurement | value |",
            "| --- | --- |",
            f"| sustained ingest, {t['messages']:,} messages | {t['per_second']:,.0f} msg/s "
            f"({ok_rate} the {TARGET_RATE:,.0f} msg/s target) |",
            f"| raw asyncpg executemany, same rows | {raw['per_second']:,.0f} msg/s |",
            f"| event -> committed row at {lat['rate']:,.0f} msg/s: p50 / p90 / p99 / max | "
            f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f} / "
            f"{lat['max_ms']:.1f} ms ({ok_p99} the {TARGET_P99_MS:.0f} ms p99 target) |",
        ]
    )
