"""Jira bridge throughput: customers' messages arriving at a steady rate on bridged chats, each
becoming a comment on its chat's ticket in the fake Jira (which answers every call after a set
delay), through the real `jira` package on the bridge's thread pool.

Per message: stored (message row + `message-new` in the event log, published on the bus as the
gateway does) -> the bridge's feeder turns it into a lane-ordered `jira_message` outbox job ->
a worker posts the comment. The lag is from the message's commit to the moment the fake Jira
created the comment. Every chat's ticket is created before the clock starts (the first message
of a chat is the issue's description, not a comment). Checked: every message became exactly one
comment, and each ticket's comments are in the order of its messages.

    python -m bench.jira_bridge [--rate 200] [--chats 50] [--seconds 30] [--delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import BenchServer
from db import jira as jira_db
from db.pool import create_pool
from gateway.bus import EventBus
from gateway.jira_bridge import BridgeConfig, JiraBridge
from gateway.security import SecretBox
from tests.fakes import jira as fj
from tests.fakes.jira import FakeJira

MARKER = re.compile(r"\{anchor:wagate-m(\d+)\}")
SECRET = "bench-secret-key"


def _pct(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))], 1)


async def _store(pool: Any, bus: EventBus, user: int, sid: int, cid: int, n: int) -> int:
    """One inbound text message, stored and published like the session's ingest does."""
    text = f"message {n} of chat {cid}: my order has not arrived yet, can you check it?"
    mid = await pool.fetchval(
        "INSERT INTO messages (session_id, conversation_id, wa_message_id, direction, "
        "sender_type, text_content, sent_at) "
        "VALUES ($1, $2, $3, 'inbound', 'user', $4, now()) RETURNING id",
        sid,
        cid,
        f"wamid.bench.{n}",
        text,
    )
    await bus.publish(
        "message-new",
        user,
        sid,
        {
            "session_id": sid,
            "id": mid,
            "conversation_id": cid,
            "direction": "inbound",
            "sender_type": "user",
            "message_type": "text",
            "text_content": text,
            "sent_at": datetime.now(UTC).isoformat(),
            "from_history": False,
        },
    )
    return int(mid)


async def _run(
    rate: float, chats: int, seconds: float, delay_ms: float, threads: int, concurrency: int
) -> dict[str, Any]:
    fake = FakeJira(delay=delay_ms / 1000)
    await fake.start()
    created_at: dict[int, float] = {}
    original = fake._comment

    def hooked(key: str, body: str, author: str, name: str) -> dict[str, Any]:
        found = MARKER.search(body)
        if found:
            created_at.setdefault(int(found.group(1)), time.monotonic())
        return original(key, body, author, name)

    fake._comment = hooked  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        async with BenchServer(Path(tmp)) as server:
            url = await server.database("jira")
            pool = await create_pool(url, min_size=4, max_size=20)
            box = SecretBox(SECRET)
            user = await pool.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ('b@x', 'x') RETURNING id"
            )
            sid = await pool.fetchval(
                "INSERT INTO sessions (owner_id, name, channel, state) "
                "VALUES ($1, 'bench', 'cloud', 'connected') RETURNING id",
                user,
            )
            conversations = [
                int(
                    await pool.fetchval(
                        "INSERT INTO conversations (session_id, external_id, contact_name, "
                        "jira_bridge) VALUES ($1, $2, $3, true) RETURNING id",
                        sid,
                        f"52155{i:08d}@s.whatsapp.net",
                        f"Customer {i}",
                    )
                )
                for i in range(chats)
            ]
            await jira_db.upsert(
                pool,
                user,
                base_url=fake.url,
                auth_kind="cloud",
                email=fj.EMAIL,
                token_sealed=box.seal(fj.API_TOKEN),
                project_key="SUP",
                issue_type="Task",
                webhook_secret_sealed=None,
                webhook_token_hash="bench",
                webhook_token_sealed=box.seal("bench"),
            )
            bus = EventBus(pool)
            config = BridgeConfig(
                concurrency=concurrency, threads=threads, timeout=10.0, backoff_cap=1.0
            )
            bridge = JiraBridge(
                web.Application(), pool, bus, box, media_dir=Path(tmp) / "media", config=config
            )
            await bridge.start(url)
            try:
                # Warm-up: every chat's ticket (its first message is the description).
                n = 0
                for cid in conversations:
                    await _store(pool, bus, user, sid, cid, n)
                    n += 1
                deadline = time.monotonic() + 120
                while len(fake.issues) < chats and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert len(fake.issues) == chats, f"{len(fake.issues)} of {chats} tickets"
                # The run: `rate` messages a second, spread over the chats in turn. Arrivals
                # are open-loop (each stored by its own task at its time, one at a time per
                # chat as a session's ingest does), so a slow store does not slow the offer.
                stored_at: dict[int, float] = {}
                chat_locks = {cid: asyncio.Lock() for cid in conversations}
                total = int(rate * seconds)
                late: list[float] = []
                stores: set[asyncio.Task[None]] = set()

                async def arrive(cid: int, number: int) -> None:
                    async with chat_locks[cid]:
                        mid = await _store(pool, bus, user, sid, cid, number)
                    stored_at[mid] = time.monotonic()

                cpu_started = time.process_time()
                started = time.monotonic()
                for i in range(total):
                    due = started + i / rate
                    now = time.monotonic()
                    if due > now:
                        await asyncio.sleep(due - now)
                    else:
                        late.append(now - due)
                    task = asyncio.create_task(arrive(conversations[i % chats], n))
                    stores.add(task)
                    task.add_done_callback(stores.discard)
                    n += 1
                await asyncio.gather(*stores)
                offered_s = time.monotonic() - started
                deadline = time.monotonic() + max(120.0, seconds * 4)
                while time.monotonic() < deadline:
                    if all(m in created_at for m in stored_at):
                        break
                    await asyncio.sleep(0.1)
                drained_s = time.monotonic() - started
                cpu_s = time.process_time() - cpu_started
            finally:
                await bridge.stop()
                await pool.close()
    await fake.stop()

    # Every message once, in order per ticket.
    landed = [m for m in stored_at if m in created_at]
    per_issue: dict[str, list[int]] = {}
    duplicates = 0
    for key, issue in fake.issues.items():
        ids = [int(x) for c in issue["comments"] for x in MARKER.findall(c["body"])]
        duplicates += len(ids) - len(set(ids))
        per_issue[key] = ids
    out_of_order = sum(1 for ids in per_issue.values() for a, b in itertools.pairwise(ids) if b < a)
    lags = sorted((created_at[m] - stored_at[m]) * 1000 for m in landed)
    last_created = max(created_at[m] for m in landed) if landed else started
    return {
        "rate_per_s": rate,
        "chats": chats,
        "seconds": seconds,
        "jira_delay_ms": delay_ms,
        "threads": threads,
        "concurrency": concurrency,
        "messages": total,
        "offered_rate_per_s": round(total / offered_s, 1),
        "producer_max_late_ms": round(max(late, default=0.0) * 1000, 1),
        "producer_late_over_10ms": sum(1 for x in late if x > 0.01),
        "comments_landed": len(landed),
        "missing": total - len(landed),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "comments_per_s": round(len(landed) / max(last_created - started, 1e-9), 1),
        "drained_after_s": round(drained_s, 1),
        "process_cpu_cores": round(cpu_s / drained_s, 2),
        "jira_calls": len(fake.calls),
        "lag_ms": {
            "p50": _pct(lags, 0.50),
            "p95": _pct(lags, 0.95),
            "p99": _pct(lags, 0.99),
            "max": round(lags[-1], 1) if lags else None,
            "mean": round(statistics.fmean(lags), 1) if lags else None,
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The target load (200 messages/s), then twice that: what the bridge does with a backlog
    (after a Jira outage, say) is to work through it at its full rate, not to slow down."""
    quick = bool(getattr(args, "quick", False))
    common = {
        "chats": getattr(args, "chats", 50),
        "delay_ms": getattr(args, "delay_ms", 50.0),
        "threads": getattr(args, "threads", 32),
        "concurrency": getattr(args, "concurrency", 64),
    }
    steady_s = getattr(args, "seconds", 10.0 if quick else 30.0)
    return {
        "steady": asyncio.run(_run(rate=getattr(args, "rate", 200.0), seconds=steady_s, **common)),
        "overload": asyncio.run(_run(rate=400.0, seconds=5.0 if quick else 15.0, **common)),
    }


def _line(result: dict[str, Any]) -> str:
    lag = result["lag_ms"]
    ok = result["missing"] == 0 and result["duplicates"] == 0 and result["out_of_order"] == 0
    return (
        f"{result['rate_per_s']:g} messages/s on {result['chats']} bridged chats for "
        f"{result['seconds']:g} s, fake Jira answering in {result['jira_delay_ms']:g} ms "
        f"({result['threads']} threads, {result['concurrency']} jobs at once): "
        f"{result['comments_landed']}/{result['messages']} comments, "
        f"{result['duplicates']} duplicates, {result['out_of_order']} out of order "
        f"({'all landed once, in order' if ok else 'NOT all once and in order'}); "
        f"{result['comments_per_s']} comments/s; lag p50 {lag['p50']} ms, p95 {lag['p95']} ms, "
        f"p99 {lag['p99']} ms, max {lag['max']} ms"
    )


def report(result: dict[str, Any]) -> str:
    return "\n".join(f"Jira bridge, {name}: {_line(r)}" for name, r in result.items())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parsed = parser.parse_args()
    out = asyncio.run(
        _run(
            parsed.rate,
            parsed.chats,
            parsed.seconds,
            parsed.delay_ms,
            parsed.threads,
            parsed.concurrency,
        )
    )
    print(f"Jira bridge: {_line(out)}")
    print(json.dumps(out, indent=2))
    sys.exit(0)
