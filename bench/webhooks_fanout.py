"""Outgoing webhooks: 1,000 events/s fanned out to 10 webhooks on loopback.

The real application (`create_app`, fake driver, no sessions) runs in this process with its
`WebhookDispatcher`; ten webhooks of one operator, each taking every event (`*`), point at a
receiver on 127.0.0.1 that runs in a process of its own (so its parsing is not charged to the
gateway's event loop). Events are published through the application's `EventBus`
(`app[BUS].publish`: one transaction appending to the durable event log, then the in-process
fan-out that wakes the webhook lanes), shaped like `message-new`, each carrying
`time.monotonic()` taken just before `publish`. The receiver notes `time.monotonic()` when the
request arrives (CLOCK_MONOTONIC is one clock for every process of the machine): that difference
is the delivery lag, publish call to the endpoint, including the commit, the lane's read of the
log, signing and the HTTP round trip. It also checks each webhook's `seq` only ever grows.

Phases, in one run:
1. **bare ingest**: no webhook exists; publish as fast as 8 concurrent publishers can: events/s.
2. **paced fan-out**: 10 webhooks; 1,000 events/s (10 every 10 ms, each publish its own task) for
   the phase's duration; delivery lag p50/p99/max over every (event, webhook) pair, the achieved
   publish rate, and how long the last deliveries took to arrive after publishing stopped.
3. **ingest with webhooks**: the same as 1 while the 10 webhooks deliver what is published.
4. **bare ingest again** (webhooks disabled), so drift on this shared machine shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import BenchServer
from db import webhooks as webhooks_db
from gateway.app import create_app
from gateway.keys import BUS, POOL, WEBHOOKS
from gateway.logs import configure_logging
from gateway.settings import Settings

REPO = Path(__file__).resolve().parent.parent
WEBHOOKS_N = 10
RATE = 1000  # events per second in the paced phase
LIGHT_RATE = 100  # and in the phase with headroom
TICK = 0.01
FULL = {"paced_seconds": 20, "ingest_events": 10_000}
QUICK = {"paced_seconds": 5, "ingest_events": 2_000}
PUBLISHERS = 8


# -- the receiver (its own process) -----------------------------------------------------------


class ReceiverState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lags: list[float] = []
        self.count = 0
        self.per_hook: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.out_of_order = 0


class ReceiverProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive endpoint (the fewest CPU cycles per request, so the
    receiver takes as little as possible from the gateway on this 2-core machine): reads each
    request, notes its arrival, answers 200."""

    def __init__(self, state: ReceiverState, stats: Callable[[str], bytes]) -> None:
        self.state = state
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic()
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
            if method == "GET":
                out = self.stats(path)
                reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                reply += b"Content-Length: %d\r\n\r\n" % len(out) + out
            else:
                self.record(path.rsplit("/", 1)[-1], body, arrived)
                reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            assert self.transport is not None
            self.transport.write(reply)

    def record(self, name: str, body: bytes, arrived: float) -> None:
        state = self.state
        event = json.loads(body)
        seq = int(event["seq"])
        if seq <= state.last_seq.get(name, 0):
            state.out_of_order += 1
        state.last_seq[name] = seq
        state.count += 1
        state.per_hook[name] = state.per_hook.get(name, 0) + 1
        sent = event["data"].get("t")
        if sent is not None:
            state.lags.append((arrived - float(sent)) * 1000)


async def receiver_main_async() -> None:
    state = ReceiverState()

    def stats(path: str) -> bytes:
        out = {
            "count": state.count,
            "per_hook": state.per_hook,
            "out_of_order": state.out_of_order,
            "lags_ms": state.lags if "lags=1" in path else [],
        }
        if "reset=1" in path:
            state.lags = []
        return json.dumps(out).encode()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ReceiverProtocol(state, stats), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # until the parent closes stdin
    server.close()


def receiver_main() -> None:
    asyncio.run(receiver_main_async())


# -- the gateway side --------------------------------------------------------------------------


def payload(n: int) -> dict[str, Any]:
    return {
        "session_id": None,
        "id": n,
        "conversation_id": 1 + n % 50,
        "wa_message_id": f"3EB0{n:016X}",
        "direction": "inbound",
        "message_type": "text",
        "text_content": f"benchmark message {n}: ¿tienen envío a Monterrey?",
        "status": "delivered",
        "sender_jid": "5215512345678@s.whatsapp.net",
        "t": time.monotonic(),
    }


async def max_ingest(publish: Callable[[int], Awaitable[Any]], events: int) -> dict[str, float]:
    """Events/s with PUBLISHERS concurrent publishers, each publishing one after another."""
    per = events // PUBLISHERS

    async def publisher(k: int) -> None:
        for i in range(per):
            await publish(k * per + i)

    started = time.perf_counter()
    await asyncio.gather(*(publisher(k) for k in range(PUBLISHERS)))
    seconds = time.perf_counter() - started
    return {
        "events": per * PUBLISHERS,
        "seconds": seconds,
        "events_per_s": per * PUBLISHERS / seconds,
    }


async def paced(
    publish: Callable[[int], Awaitable[Any]], seconds: float, rate: int
) -> dict[str, float]:
    """`rate` events/s: every TICK, rate*TICK publishes as tasks of their own."""
    per_tick = max(1, int(rate * TICK))
    ticks = int(seconds / TICK)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []
    started = loop.time()
    n = 0
    for tick in range(ticks):
        for _ in range(per_tick):
            tasks.append(loop.create_task(publish(n)))
            n += 1
        delay = started + (tick + 1) * TICK - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*tasks)
    elapsed = loop.time() - started
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed}


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "p50": round(q(0.50), 1),
        "p90": round(q(0.90), 1),
        "p99": round(q(0.99), 1),
        "max": round(ordered[-1], 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("kv", "info" if args.verbose else "warning")
    scale = QUICK if args.quick else FULL
    log = logging.getLogger("bench.webhooks_fanout")
    result: dict[str, Any] = {"webhooks": WEBHOOKS_N, "rate": RATE, **scale}
    with tempfile.TemporaryDirectory(prefix="wagate-webhooks-") as tmp:
        async with BenchServer(Path(tmp)) as server:
            url = await server.database("webhooks")
            result["postgres"] = await server.settings()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from bench.webhooks_fanout import receiver_main; receiver_main()",
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert proc.stdout is not None
            assert proc.stdin is not None
            port = json.loads(await proc.stdout.readline())["port"]
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                data_dir=Path(tmp) / "var",
                database_url=url,
                secret_key="bench-secret-key",
                admin_password="bench-password-1",
                driver="fake",
                log_level="warning",
                webhooks_allow_private=True,
            )
            app = create_app(settings)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            try:
                result.update(await phases(app, port, scale, log))
            finally:
                await runner.cleanup()
                proc.stdin.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
                if proc.returncode is None:
                    proc.kill()
    return result


async def receiver_stats(port: int, *, lags: bool = False, reset: bool = False) -> dict[str, Any]:
    import aiohttp

    query = {"lags": "1" if lags else "", "reset": "1" if reset else ""}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/stats", params=query) as resp,
    ):
        return dict(await resp.json())


async def wait_delivered(port: int, total: int, timeout: float) -> float:
    """Seconds until the receiver has `total` requests (or the timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await receiver_stats(port))["count"] >= total:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("nan")


async def phases(
    app: web.Application, port: int, scale: dict[str, int], log: logging.Logger
) -> dict[str, Any]:
    bus, pool, dispatcher = app[BUS], app[POOL], app[WEBHOOKS]
    user_id = int(await pool.fetchval("SELECT id FROM users ORDER BY id LIMIT 1"))

    async def publish(n: int) -> Any:
        return await bus.publish("message-new", user_id, None, payload(n))

    out: dict[str, Any] = {}
    log.warning("phase 1: bare ingest")
    out["bare_ingest"] = await max_ingest(publish, scale["ingest_events"])

    hooks = []
    for i in range(WEBHOOKS_N):
        hook = await webhooks_db.create(
            pool,
            user_id=user_id,
            url=f"http://127.0.0.1:{port}/h/{i}",
            events=["*"],
            session_id=None,
            description=f"bench {i}",
            secret_encrypted=dispatcher.box.seal(f"whsec_bench_secret_{i:04d}"),
            enabled=True,
        )
        hooks.append(hook.id)
    dispatcher.changed()
    deadline = time.monotonic() + 10
    while dispatcher.lane_count() < WEBHOOKS_N and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    out["lanes"] = dispatcher.lane_count()

    stats: dict[str, Any] = await receiver_stats(port)
    for key, rate in (("paced", RATE), ("paced_light", LIGHT_RATE)):
        log.warning("phase 2: paced fan-out at %d events/s", rate)
        await receiver_stats(port, reset=True)
        before = (await receiver_stats(port))["count"]
        published = await paced(publish, scale["paced_seconds"], rate)
        expected = before + published["events"] * WEBHOOKS_N
        drain = await wait_delivered(port, expected, 600)
        stats = await receiver_stats(port, lags=True, reset=True)
        out[key] = {
            "rate": rate,
            **published,
            "deliveries": stats["count"] - before,
            "expected_deliveries": published["events"] * WEBHOOKS_N,
            "drain_seconds_after_last_publish": drain,
            "deliveries_per_s": (stats["count"] - before) / (published["seconds"] + drain),
            "lag_ms": quantiles(stats["lags_ms"]),
            "out_of_order": stats["out_of_order"],
        }

    log.warning("phase 3: ingest with webhooks delivering")
    before = stats["count"]
    out["webhook_ingest"] = await max_ingest(publish, scale["ingest_events"])
    total = before + out["webhook_ingest"]["events"] * WEBHOOKS_N
    out["webhook_ingest"]["drain_seconds"] = await wait_delivered(port, total, 300)
    final = await receiver_stats(port, lags=True, reset=True)
    out["webhook_ingest"]["lag_ms"] = quantiles(final["lags_ms"])
    out["webhook_ingest"]["out_of_order"] = final["out_of_order"]

    for hook_id in hooks:
        await webhooks_db.update(pool, hook_id, enabled=False)
    dispatcher.changed()
    deadline = time.monotonic() + 10
    while dispatcher.lane_count() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log.warning("phase 4: bare ingest again")
    out["bare_ingest_again"] = await max_ingest(publish, scale["ingest_events"])
    out["delivered_total"] = final["count"]
    out["per_hook"] = final["per_hook"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(run_async(args))


def report(result: dict[str, Any]) -> str:
    paced_ = result["paced"]
    ingest = result["webhook_ingest"]
    lines = [
        f"Webhook fan-out: {result['webhooks']} webhooks, every event to each, receiver on "
        "loopback in its own process.",
        "",
        "| phase | events | events/s published | deliveries | lag p50 | lag p99 | lag max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| bare ingest (no webhooks) | {result['bare_ingest']['events']} | "
        f"{result['bare_ingest']['events_per_s']:.0f} | - | - | - | - |",
        *(
            f"| paced {p['rate']}/s, 10 webhooks | {p['events']} | "
            f"{p['events_per_s']:.0f} | {p['deliveries']}/{p['expected_deliveries']} | "
            f"{p['lag_ms'].get('p50')} ms | {p['lag_ms'].get('p99')} ms | "
            f"{p['lag_ms'].get('max')} ms |"
            for p in (paced_, result["paced_light"])
        ),
        f"| max ingest, 10 webhooks delivering | {ingest['events']} | "
        f"{ingest['events_per_s']:.0f} | (drained {ingest['drain_seconds']:.1f} s later) | "
        f"{ingest['lag_ms'].get('p50')} ms | {ingest['lag_ms'].get('p99')} ms | "
        f"{ingest['lag_ms'].get('max')} ms |",
        f"| bare ingest again | {result['bare_ingest_again']['events']} | "
        f"{result['bare_ingest_again']['events_per_s']:.0f} | - | - | - | - |",
        "",
        f"Out of order deliveries: {paced_['out_of_order'] + ingest['out_of_order']}. "
        f"At {paced_['rate']}/s the last delivery arrived "
        f"{paced_['drain_seconds_after_last_publish']:.1f} s after the last publish "
        f"({paced_['deliveries_per_s']:.0f} deliveries/s overall).",
    ]
    return "\n".join(lines)
