"""Cloud API webhook: signed POSTs with one text message each, durable commit before the 200.

The real gateway (`run.py serve`, its own process, on a scratch database of a private PostgreSQL)
answers Meta-shaped webhooks: HMAC check over the raw body, JSON check, group commit of the raw
body into `cloud_webhook_events`, then 200; the inbox processor stores the messages meanwhile, as
in production. In the same run and with the same load generator, a bare aiohttp handler that
reads the body and answers 200 gives the ceiling of this machine; the ratio is the figure.

Load: this process opens C keep-alive connections (raw asyncio streams, requests built and signed
beforehand) and sends one request at a time on each (closed loop) for a fixed time after a
warm-up. Reported: requests/s, p50/p90/p99/max latency, the rows committed against the 200s
counted (each 200 must be a committed row), and how long the processor took to store everything.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import BenchServer

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-app-secret"
PHONE_NUMBER_ID = "106540352242922"
TARGET_RATE = 3000.0
TARGET_P99_MS = 50.0


def build_requests(count: int, port: int, tag: str) -> list[bytes]:
    out = []
    now = int(time.time())
    for i in range(count):
        body = json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "102290129340398",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {
                                        "display_phone_number": "15550783881",
                                        "phone_number_id": PHONE_NUMBER_ID,
                                    },
                                    "contacts": [
                                        {
                                            "profile": {"name": f"Customer {i % 500}"},
                                            "wa_id": f"1650555{i % 500:04d}",
                                        }
                                    ],
                                    "messages": [
                                        {
                                            "from": f"1650555{i % 500:04d}",
                                            "id": f"wamid.BENCH{tag}{i:010d}",
                                            "timestamp": str(now),
                                            "type": "text",
                                            "text": {"body": f"webhook message {i}, hello"},
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            }
        ).encode()
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        head = (
            f"POST /api/whatsapp/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nX-Hub-Signature-256: sha256={signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def load(
    port: int, requests: list[bytes], *, connections: int, warmup: float, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cursor = iter(range(10**12))
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    total = len(requests)

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                writer.write(requests[next(cursor) % total])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                done = time.perf_counter()
                if done >= measure_from and done < stop_at:
                    latencies.append(done - now)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000 if n else 0.0

    return {
        "connections": connections,
        "seconds": seconds,
        "requests": n,
        "per_second": n / seconds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if n else 0.0,
        "mean_ms": statistics.fmean(latencies) * 1000 if n else 0.0,
        "sent_total": next(cursor),
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(args: list[str], env: dict[str, str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if ready in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("process did not start:\n" + "".join(lines[-30:]))


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bare_server(port: int) -> None:
    """A bare aiohttp handler: read the body, answer 200 (the ceiling of this machine)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_post("/api/whatsapp/webhook", handler)
    print("bare server ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    connections = 32
    warmup, seconds = (1.0, 4.0) if quick else (3.0, 15.0)
    count = 20_000 if quick else 80_000
    result: dict[str, Any] = {"connections": connections}
    root = Path(tempfile.mkdtemp(prefix="wagate-bench-cloud-"))
    try:
        async with BenchServer(root) as server:
            result["postgres"] = await server.settings()
            url = await server.database("cloud")
            env = {k: v for k, v in os.environ.items() if not k.startswith("WAGATE_")}
            python = sys.executable

            # 1. The bare handler, the ceiling.
            port = free_port()
            bare = start_process(
                [python, "-m", "bench.cloud_webhook", "--bare", str(port)], env, "ready"
            )
            try:
                requests = build_requests(count, port, "B")
                result["bare"] = await load(
                    port, requests, connections=connections, warmup=warmup, seconds=seconds
                )
            finally:
                stop_process(bare)

            # 2. The gateway, durable before the 200.
            port = free_port()
            gateway_env = {
                **env,
                "WAGATE_DATABASE_URL": url,
                "WAGATE_DATA_DIR": str(root / "var"),
                "WAGATE_PORT": str(port),
                "WAGATE_DRIVER": "fake",
                "WAGATE_LOG_LEVEL": "warning",
                "WAGATE_ADMIN_PASSWORD": "bench-admin-password",
                "WAGATE_CLOUD_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
                "WAGATE_CLOUD_ACCESS_TOKEN": "bench-token",
                "WAGATE_CLOUD_APP_SECRET": SECRET,
                "WAGATE_CLOUD_VERIFY_TOKEN": "bench-verify",
                "WAGATE_CLOUD_GRAPH_URL": "http://127.0.0.1:9",
            }
            gateway = start_process([python, "run.py", "serve"], gateway_env, "serving on")
            try:
                requests = build_requests(count, port, "G")
                result["gateway"] = await load(
                    port, requests, connections=connections, warmup=warmup, seconds=seconds
                )
                conn = await asyncpg.connect(url)
                try:
                    committed = int(
                        await conn.fetchval("SELECT count(*) FROM cloud_webhook_events")
                    )
                    started = time.monotonic()
                    while await conn.fetchval(
                        "SELECT count(*) FROM cloud_webhook_events WHERE state = 'pending'"
                    ):
                        if time.monotonic() - started > 120:
                            break
                        await asyncio.sleep(0.2)
                    drained = time.monotonic() - started
                    stored = int(await conn.fetchval("SELECT count(*) FROM messages"))
                finally:
                    await conn.close()
                result["gateway"]["rows_committed"] = committed
                result["gateway"]["backlog_drain_seconds"] = round(drained, 2)
                result["gateway"]["messages_stored"] = stored
            finally:
                stop_process(gateway)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["ratio"] = result["gateway"]["per_second"] / max(1.0, result["bare"]["per_second"])
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(measure(args))


def report(result: dict[str, Any]) -> str:
    gw, bare = result["gateway"], result["bare"]
    ok_rate = "meets" if gw["per_second"] >= TARGET_RATE else "MISSES"
    ok_p99 = "meets" if gw["p99_ms"] <= TARGET_P99_MS else "MISSES"

    def row(name: str, r: dict[str, Any]) -> str:
        return (
            f"| {name} | {r['per_second']:,.0f} req/s | {r['p50_ms']:.1f} / {r['p90_ms']:.1f} / "
            f"{r['p99_ms']:.1f} / {r['max_ms']:.1f} ms | {r['statuses']} |"
        )

    return "\n".join(
        [
            f"## Cloud API webhook ({result['connections']} keep-alive connections, closed loop)",
            "",
            "| server | throughput | p50 / p90 / p99 / max | statuses |",
            "| --- | --- | --- | --- |",
            row("bare aiohttp handler (reads the body, answers 200)", bare),
            row("wagate: HMAC, JSON, group commit, then 200", gw),
            "",
            f"- ratio wagate / bare: **{result['ratio']:.2f}**; target {TARGET_RATE:,.0f} req/s "
            f"({ok_rate}) with p99 <= {TARGET_P99_MS:.0f} ms ({ok_p99}).",
            f"- rows committed: {gw['rows_committed']:,} for {gw['sent_total']:,} requests sent "
            f"(every 200 is a committed row); messages stored by the processor: "
            f"{gw['messages_stored']:,}, backlog drained {gw['backlog_drain_seconds']} s after "
            "the load stopped.",
        ]
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare":
        bare_server(int(sys.argv[2]))
