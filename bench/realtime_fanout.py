"""Socket.IO fan-out: bus event -> every socket of its owner, at a steady rate, many clients.

The real application (`create_app`, fake driver, every session stopped) serves Socket.IO on a TCP
port on 127.0.0.1. 50 operators each have one session and 10 sockets: 500 real
`socketio.AsyncClient`s (websocket transport, `auth {token}`), each admitted by the gateway's
own namespace (token check, user lookup, its rooms). The benchmark process publishes 500
`message-new` events per second through the application's `EventBus` (`app[BUS].publish`),
round-robin over the operators, 5 every 10 ms, each as its own task, the way independent
sources publish. Each publish is the real path: one transaction appending to the durable event
log in PostgreSQL (the per-user counter row, then the row), then the fan-out to the Socket.IO
forwarder, which validates the wire model and emits to the owner's user and session rooms.

Each payload is shaped like the live path's `message-new` and carries `time.monotonic()` taken
just before `publish` is called; each client notes `time.monotonic()` when its handler runs
(CLOCK_MONOTONIC is one clock for every process of the machine). Every socket also checks that
the event belongs to its own operator and counts what it got, so lost or misrouted events show.

The clients run in ONE separate process. In the gateway's process they would share its event
loop: 5,000 deliveries a second of client-side decoding would be charged to the server, and the
server's work would delay the client's timestamps. One process, not more, because this machine
has 2 cores: more client processes would only take CPU from the server and PostgreSQL. The
client process runs a loop-lag probe (a 10 ms sleep, lateness recorded) and so does the server,
so their share of the latency is visible.

The client process calls `gc.freeze()` once its sockets are connected: it stands for 500
browsers, and a full garbage collection of its 1,000 client objects stops it for about 100 ms,
a pause no real client has. The servers' heaps are left as they are in the main phases (their
collections are real); every process records each full collection's pause.

Baseline in the same run, with the same client process: a bare python-socketio `AsyncServer`
on a plain aiohttp application, in a process of its own (so neither server's heap and
collections weigh on the other), each socket put in its operator's room at connect from a
token -> user table in memory, and the same events, emitted directly to that room at the same
rate by the same publishing loop: no event log, no bus, no forwarder. The phases alternate
(see below) so drift on this shared machine falls on all of them.

A full collection of the gateway's heap (every object the application, its libraries and its
500 server-side sockets hold) takes 65-90 ms on this machine, and at this rate one comes every
few seconds. So each round also runs both servers with their heap frozen (`gc.freeze()`
just before the phase, `gc.unfreeze()` after): what a gateway that freezes its heap once it has
started would see. The four phases of a round: app, bare, app frozen, bare frozen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import socketio
from aiohttp import web

from bench.api_read import machine_busy, postgres_pids, processes_cpu, serve
from bench.common import BenchServer
from gateway.app import create_app
from gateway.keys import BUS, TOKENS
from gateway.logs import configure_logging
from gateway.realtime import REALTIME
from gateway.settings import Settings

TARGET_P99_MS = 100.0
KINDS = ("app", "bare", "app-frozen", "bare-frozen")
LABELS = {
    "app": "wagate (bus + event log + forwarder)",
    "bare": "bare python-socketio",
    "app-frozen": "wagate, heap frozen (gc.freeze)",
    "bare-frozen": "bare, heap frozen (gc.freeze)",
}
REPO = Path(__file__).resolve().parent.parent
EVENT = "message-new"


@dataclass(frozen=True)
class Scale:
    operators: int
    sockets_per_operator: int
    rate: float  # events per second
    phase_s: float
    rounds: int  # (app, bare) pairs
    warmup_s: float


FULL = Scale(
    operators=50, sockets_per_operator=10, rate=500.0, phase_s=10.0, rounds=2, warmup_s=3.0
)
QUICK = Scale(operators=10, sockets_per_operator=5, rate=200.0, phase_s=4.0, rounds=1, warmup_s=1.0)


def _quantiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "n": len(ms),
        "p50_ms": q[49],
        "p90_ms": q[89],
        "p99_ms": q[98],
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


class LagProbe:
    """How late a 10 ms sleep wakes up: the event loop's own delay, per phase; and how long
    each full (generation 2) garbage collection stopped the process."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}
        self.gc_pauses: dict[str, list[float]] = {}
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def _gc(self, what: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if what == "start":
            self._gc_started = time.perf_counter()
        else:
            pause = (time.perf_counter() - self._gc_started) * 1000
            self.gc_pauses.setdefault(self.phase, []).append(pause)

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            late = (time.monotonic() - t - 0.01) * 1000
            self.samples.setdefault(self.phase, []).append(late)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the client process ------------------------------------------------------------------------


class ClientSide:
    """Every socket of the client process, and what they received."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.received: dict[str, dict[int, int]] = {}  # phase -> operator -> deliveries
        self.foreign = 0
        self.sockets: list[socketio.AsyncClient] = []
        self.lag = LagProbe()

    def handler(self, operator: int) -> Any:
        latency, received = self.latency, self.received
        lag = self.lag

        async def on_event(data: Any) -> None:
            now = time.monotonic()
            phase = data["bench_phase"]
            if data["bench_user"] != operator:
                self.foreign += 1
            lag.phase = phase
            latency.setdefault(phase, []).append((now - data["bench_t"]) * 1000)
            per = received.setdefault(phase, {})
            per[operator] = per.get(operator, 0) + 1

        return on_event

    async def connect(self, url: str, tokens: dict[int, str], per_operator: int) -> None:
        slots = asyncio.Semaphore(20)

        async def one(operator: int, token: str) -> None:
            sio = socketio.AsyncClient(reconnection=False)
            sio.on(EVENT, self.handler(operator))
            async with slots:
                await sio.connect(
                    url, transports=["websocket"], auth={"token": token}, wait_timeout=20
                )
            self.sockets.append(sio)

        await asyncio.gather(
            *(one(op, tok) for op, tok in tokens.items() for _ in range(per_operator))
        )

    async def close(self) -> None:
        async def one(sio: socketio.AsyncClient) -> None:
            with contextlib.suppress(Exception):
                await sio.disconnect()
            http = getattr(sio.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()

        await asyncio.gather(*(one(s) for s in self.sockets))


async def client_main_async() -> None:
    config = json.loads(await asyncio.to_thread(sys.stdin.readline))
    side = ClientSide()
    side.lag.start()
    tokens = {int(k): v for k, v in config["tokens"].items()}
    started = time.monotonic()
    for url in config["urls"]:
        await side.connect(url, tokens, config["per_operator"])
    gc.freeze()  # the apparatus: see the module's docstring
    print(f"READY {len(side.sockets)} {time.monotonic() - started:.1f}", flush=True)
    cpu0 = time.process_time()
    await asyncio.to_thread(sys.stdin.readline)  # STOP
    cpu = time.process_time() - cpu0
    await side.lag.stop()
    result = {
        "sockets": len(side.sockets),
        "foreign": side.foreign,
        "cpu_s": cpu,
        "latency": {p: _quantiles(v) for p, v in side.latency.items()},
        "received": {p: {str(k): n for k, n in v.items()} for p, v in side.received.items()},
        "lag": {p: _quantiles(v) for p, v in side.lag.samples.items()},
        "gc2": {p: _quantiles(v) for p, v in side.lag.gc_pauses.items()},
    }
    await side.close()
    print("RESULT " + json.dumps(result), flush=True)


def client_main() -> None:
    asyncio.run(client_main_async())


# -- the server side ---------------------------------------------------------------------------


def payload(operator: int, session_id: int, n: int, phase: str) -> dict[str, Any]:
    """A `message-new` payload as the live path publishes it, plus the benchmark's fields."""
    return {
        "session_id": session_id,
        "id": 10_000_000 + n,
        "conversation_id": 1000 + operator,
        "wa_message_id": f"3EB0BENCH{n:012d}",
        "direction": "inbound",
        "sender_type": "user",
        "message_type": "text",
        "text_content": "Hola, quisiera saber el precio del envío a Monterrey, gracias",
        "sent_at": datetime.now(UTC).isoformat(),
        "from_history": False,
        "bench_user": operator,
        "bench_phase": phase,
        "bench_t": time.monotonic(),
    }


Send = Callable[[int, int, dict[str, Any]], Awaitable[None]]


async def drive(
    name: str, scale: Scale, seconds: float, operators: list[tuple[int, int]], send: Send
) -> dict[str, Any]:
    """Publish at `scale.rate` for `seconds`, 5 events every 10 ms, each its own task."""
    tick = 0.01
    per_tick = max(1, round(scale.rate * tick))
    published: dict[int, int] = {}
    publish_ms: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    late = 0
    n = 0

    async def one(operator: int, session_id: int, k: int) -> None:
        data = payload(operator, session_id, k, name)
        t = time.monotonic()
        await send(operator, session_id, data)
        publish_ms.append((time.monotonic() - t) * 1000)

    started = time.monotonic()
    for i in range(int(seconds / tick)):
        for _ in range(per_tick):
            operator, session_id = operators[n % len(operators)]
            task = asyncio.get_running_loop().create_task(one(operator, session_id, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            published[operator] = published.get(operator, 0) + 1
            n += 1
        wait = started + (i + 1) * tick - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return {
        "published": published,
        "publish_ms": publish_ms,
        "late_ticks": late,
        "seconds": time.monotonic() - started,
    }


# -- the bare server (a process of its own) ----------------------------------------------------


def bare_server(tokens: dict[str, int]) -> tuple[web.Application, socketio.AsyncServer]:
    """python-socketio on plain aiohttp: a room per operator, nothing else."""
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        user = tokens.get((auth or {}).get("token", ""))
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError("bad token")
        await sio.enter_room(sid, f"user:{user}")

    app = web.Application()
    sio.attach(app, socketio_path="socket.io")
    return app, sio


async def bare_main_async() -> None:
    config = json.loads(await asyncio.to_thread(sys.stdin.readline))
    scale = Scale(**config["scale"])
    operators = [(int(u), int(s)) for u, s in config["operators"]]
    app, sio = bare_server({t: int(u) for t, u in config["tokens"].items()})
    runner, base = await serve(app)
    lag = LagProbe()
    lag.start()
    seq = 0

    async def direct(operator: int, session_id: int, data: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        wire = {**data, "seq": seq, "created_at": datetime.now(UTC).isoformat()}
        await sio.emit(EVENT, wire, to=f"user:{operator}")

    print(f"URL {base}", flush=True)
    while True:
        command = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not command or command[0] == "EXIT":
            break
        _, name, seconds, frozen = command
        lag.phase = name
        cpu0 = time.process_time()
        if frozen == "1":
            gc.freeze()
        done = await drive(name, scale, float(seconds), operators, direct)
        gc.unfreeze()
        done["cpu_s"] = time.process_time() - cpu0
        done["lag"] = lag.samples.get(name, [])
        done["gc2"] = lag.gc_pauses.get(name, [])
        lag.phase = "idle"
        print("DONE " + json.dumps(done), flush=True)
    await lag.stop()
    await runner.cleanup()


def bare_main() -> None:
    asyncio.run(bare_main_async())


class Child:
    """A helper process of this benchmark, driven by lines on its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout
        self.ps = psutil.Process(proc.pid)

    @classmethod
    async def start(cls, entry: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"from bench.realtime_fanout import {entry}; {entry}()",
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            limit=2**26,  # a phase's publish times come back on one line
        )
        return cls(proc)

    async def send(self, line: str) -> None:
        self.stdin.write((line + "\n").encode())
        await self.stdin.drain()

    async def expect(self, word: str, timeout: float) -> str:
        line = (await asyncio.wait_for(self.stdout.readline(), timeout)).decode().strip()
        if not line.startswith(word + " ") and line != word:
            raise RuntimeError(f"helper process: expected {word}, got {line[:300]!r}")
        return line[len(word) :].strip()

    def cpu(self) -> float:
        with contextlib.suppress(psutil.Error):
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        return 0.0

    async def finish(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- the run -----------------------------------------------------------------------------------


class Window:
    """CPU of every party, the whole machine's, and the load average, around one phase."""

    def __init__(self, server: Child | None, client: Child, pg_pids: list[int]) -> None:
        self.server, self.client, self.pg_pids = server, client, pg_pids

    def _server_cpu(self) -> float:
        return self.server.cpu() if self.server is not None else time.process_time()

    def __enter__(self) -> Window:
        self.t0 = time.monotonic()
        self.cpu0 = (self._server_cpu(), self.client.cpu(), processes_cpu(self.pg_pids))
        self.busy0, self.load0 = machine_busy(), os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self.t0
        server, client, pg = (
            self._server_cpu() - self.cpu0[0],
            self.client.cpu() - self.cpu0[1],
            processes_cpu(self.pg_pids) - self.cpu0[2],
        )
        busy = machine_busy() - self.busy0
        self.result = {
            "server_cpu_pct": 100 * server / seconds,
            "client_cpu_pct": 100 * client / seconds,
            "postgres_cpu_pct": 100 * pg / seconds,
            "others_cpu_pct": 100 * (busy - server - client - pg) / seconds,
            "loadavg_start_end": [self.load0, os.getloadavg()[0]],
        }


async def _setup_users(url: str, scale: Scale) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(url)
    try:
        users = [
            int(r["id"])
            for r in await conn.fetch(
                "INSERT INTO users (email, password_hash, role) "
                "SELECT 'operator' || g || '@bench.example', 'x', 'operator' "
                "FROM generate_series(1, $1) g ORDER BY g RETURNING id",
                scale.operators,
            )
        ]
        out = []
        for user in users:
            sid = await conn.fetchval(
                "INSERT INTO sessions (owner_id, name, state, desired_state) "
                "VALUES ($1, 'Línea', 'stopped', 'stopped') RETURNING id",
                user,
            )
            out.append((user, int(sid)))
        return out
    finally:
        await conn.close()


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("kv", "info" if args.verbose else "warning")
    scale = QUICK if args.quick else FULL
    log = logging.getLogger("bench.realtime_fanout")
    with tempfile.TemporaryDirectory(prefix="wagate-fanout-") as tmp:
        root = Path(tmp)
        async with BenchServer(root) as server:
            url = await server.database("fanout")
            operators = await _setup_users(url, scale)
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                data_dir=root / "var",
                database_url=url,
                secret_key="bench-secret-key-fanout-" + uuid.uuid4().hex,
                admin_email="admin@bench.example",
                admin_password="bench-admin-password",
                driver="fake",
                log_level="warning",
            )
            app = create_app(settings, database_url=url)
            runner, base = await serve(app)
            tokens = {user: app[TOKENS].issue(user, "operator")[0] for user, _ in operators}
            bare = await Child.start("bare_main")
            client = await Child.start("client_main")
            try:
                await bare.send(
                    json.dumps(
                        {
                            "scale": scale.__dict__,
                            "operators": operators,
                            "tokens": {t: u for u, t in tokens.items()},
                        }
                    )
                )
                bare_base = await bare.expect("URL", 60)
                await client.send(
                    json.dumps(
                        {
                            "urls": [base, bare_base],
                            "tokens": {str(u): t for u, t in tokens.items()},
                            "per_operator": scale.sockets_per_operator,
                        }
                    )
                )
                ready = (await client.expect("READY", 300)).split()
                log.info("fanout: %s sockets connected in %s s", ready[0], ready[1])
                bus = app[BUS]

                async def via_bus(operator: int, session_id: int, data: dict[str, Any]) -> None:
                    await bus.publish(EVENT, operator, session_id, data)

                lag = LagProbe()
                lag.start()
                lag.phase = "warmup-app"
                await drive("warmup-app", scale, scale.warmup_s, operators, via_bus)
                await bare.send(f"RUN warmup-bare {scale.warmup_s} 0")
                await bare.expect("DONE", 120)
                pg_pids = await postgres_pids(url)  # the pool has grown by now
                phases: list[dict[str, Any]] = []
                for r in range(scale.rounds):
                    for kind in KINDS:
                        name = f"{kind}-{r + 1}"
                        frozen = kind.endswith("frozen")
                        if kind.startswith("app"):
                            lag.phase = name
                            if frozen:
                                gc.freeze()
                            with Window(None, client, pg_pids) as window:
                                done = await drive(name, scale, scale.phase_s, operators, via_bus)
                            gc.unfreeze()
                            done["lag"] = lag.samples.get(name, [])
                            done["gc2"] = lag.gc_pauses.get(name, [])
                            lag.phase = "gap"
                        else:
                            with Window(bare, client, pg_pids) as window:
                                await bare.send(f"RUN {name} {scale.phase_s} {int(frozen)}")
                                done = json.loads(await bare.expect("DONE", 120))
                        phases.append({"name": name, "kind": kind, **done, **window.result})
                        await asyncio.sleep(1.0)
                await lag.stop()
                await app[REALTIME].drain()
                await asyncio.sleep(1.0)
                await client.send("STOP")
                clients = json.loads(await client.expect("RESULT", 120))
                dropped = app[REALTIME].dropped
                await bare.send("EXIT")
            finally:
                await client.finish()
                await bare.finish()
                await runner.cleanup()
            pg = await server.settings()
            pg["server"] = server.description
    return summarize(scale, phases, clients, dropped, pg)


def summarize(
    scale: Scale,
    phases: list[dict[str, Any]],
    clients: dict[str, Any],
    dropped: int,
    pg: dict[str, str],
) -> dict[str, Any]:
    per = scale.sockets_per_operator
    out: dict[str, Any] = {
        "scale": scale.__dict__,
        "sockets_per_server": clients["sockets"] // 2,
        "foreign_events": clients["foreign"],
        "forwarder_dropped": dropped,
        "postgres": pg,
    }
    for kind in KINDS:
        mine = [p for p in phases if p["kind"] == kind]
        latencies = [clients["latency"].get(p["name"], {"n": 0}) for p in mine]
        published = sum(sum(p["published"].values()) for p in mine)
        short = 0
        for p in mine:
            got = clients["received"].get(p["name"], {})
            short += sum(1 for op, n in p["published"].items() if got.get(str(op), 0) != n * per)
        seconds = sum(p["seconds"] for p in mine)
        out[kind] = {
            "published": published,
            "seconds": seconds,
            "rate": published / seconds,
            "deliveries_expected": published * per,
            "deliveries": sum(sum(clients["received"].get(p["name"], {}).values()) for p in mine),
            "operators_short": short,
            "late_ticks": sum(p["late_ticks"] for p in mine),
            # The client reports quantiles per phase, not every sample: the worst phase's p99
            # is the one that counts.
            "latency_by_phase": latencies,
            "latency_p50_ms": statistics.median(q["p50_ms"] for q in latencies if q["n"]),
            "latency_p99_ms": max(q["p99_ms"] for q in latencies if q["n"]),
            "latency_max_ms": max(q["max_ms"] for q in latencies if q["n"]),
            "publish": _quantiles([ms for p in mine for ms in p["publish_ms"]]),
            "server_loop_lag": _quantiles([x for p in mine for x in p["lag"]]),
            "server_gc2_pauses": _quantiles([x for p in mine for x in p["gc2"]]),
            "client_loop_lag": [clients["lag"].get(p["name"], {"n": 0}) for p in mine],
            "client_gc2_pauses": [clients["gc2"].get(p["name"], {"n": 0}) for p in mine],
            **{
                key: statistics.fmean(p[key] for p in mine)
                for key in (
                    "server_cpu_pct",
                    "client_cpu_pct",
                    "postgres_cpu_pct",
                    "others_cpu_pct",
                )
            },
        }
    out["phases"] = [
        {
            "name": p["name"],
            "seconds": p["seconds"],
            "published": sum(p["published"].values()),
            "late_ticks": p["late_ticks"],
            "latency": clients["latency"].get(p["name"]),
            "gc2_pauses_ms": p["gc2"],
            "loadavg_start_end": p["loadavg_start_end"],
            "others_cpu_pct": p["others_cpu_pct"],
        }
        for p in phases
    ]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(run_async(args))


def report(result: dict[str, Any]) -> str:
    scale = result["scale"]
    lines = [
        "## Socket.IO fan-out (bus event -> client)",
        "",
        f"{result['sockets_per_server']} sockets per server ({scale['operators']} operators x "
        f"{scale['sockets_per_operator']}), {scale['rate']:.0f} events/s, "
        f"{scale['rounds']} x {scale['phase_s']:.0f} s per server and mode, alternating. "
        f"Events delivered to a foreign operator's socket: {result['foreign_events']}; "
        f"dropped by the forwarder: {result['forwarder_dropped']}.",
        "",
        "| path | events/s | deliveries / expected | event -> client p50 / p99 / max ms | "
        "publish p99 ms | server full-GC pauses | CPU server / client / PG / others |",
        "| --- | ---: | --- | --- | ---: | --- | --- |",
    ]
    for kind in KINDS:
        r, label = result[kind], LABELS[kind]
        ok = ""
        if kind.startswith("app"):
            ok = " (meets)" if r["latency_p99_ms"] <= TARGET_P99_MS else " (MISSES)"
        gc2 = r["server_gc2_pauses"]
        pauses = f"{gc2['n']} x {gc2['p50_ms']:.0f} ms" if gc2.get("n") else "none"
        lines.append(
            f"| {label} | {r['rate']:.0f} | {r['deliveries']:,} / {r['deliveries_expected']:,} | "
            f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f}{ok} / "
            f"{r['latency_max_ms']:.1f} | {r['publish'].get('p99_ms', 0):.1f} | {pauses} | "
            f"{r['server_cpu_pct']:.0f}% / {r['client_cpu_pct']:.0f}% / "
            f"{r['postgres_cpu_pct']:.0f}% / {r['others_cpu_pct']:.0f}% |"
        )
    return "\n".join(lines)
