"""Memory per idle WhatsApp session, measured on the real supervisor and real worker processes.

Each configuration (driver x sessions per worker x number of sessions) gets a fresh, migrated
database with one user and N session rows that should run; `SessionSupervisor.start()` then
spawns `python -m sessions.worker` processes exactly as the gateway does. Measured:

- driver "fake" (the in-repo fake WhatsApp): twice, while every session shows a QR code, then
  after a simulated phone scanned each one and the session is connected and idle;
- driver "neonize" (the real library, Go runtime included), offline: this machine cannot reach
  WhatsApp, so every connect fails and is retried with backoff. That is what an idle session
  looks like here; a linked session online holds more (keys, app state, caches).

Memory is the PSS (proportional set size: private pages plus a fair share of every shared page)
of every worker process, summed, with its anonymous part (Pss_Anon: what no other process can
share), USS and RSS beside it, sampled a few times once the sessions have settled. PSS is
the number that adds up: N processes that map the same library pages share their cost. The
PostgreSQL backends the sessions open (neonize's device store) are reported separately. Bare
interpreters are measured in the same run, so the ratios mean something.

PostgreSQL: a private embedded server for the whole run (unless WAGATE_DATABASE_URL names one),
with a scratch database per configuration, dropped afterwards. The supervisor is stopped after
each configuration and every worker it started is checked to be gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
import psutil

from bench.common import with_database
from db import migrate
from db import sessions as sessions_db
from db import users as users_db
from db.embedded import EmbeddedPostgres, process_alive
from sessions.fake_server import FakeWhatsApp, Phone
from sessions.supervisor import (
    TERMINAL_STATES,
    SessionSupervisor,
    SupervisorConfig,
    device_store_url,
)

Driver = Literal["fake", "neonize"]

REPO = Path(__file__).resolve().parent.parent
MB = 2**20
TARGET_MB = 25.0  # the target: PSS per additional session in the densest mode
DENSE = 50  # sessions per worker in the densest mode: every session of the run in one worker
GROUPED = 10
SETTLE_SECONDS = 5.0  # quiet time after the last state change before measuring
SAMPLES = 3
SAMPLE_GAP_SECONDS = 1.0
# Offline neonize: a slow retry loop keeps the workers quiet while they are measured, and keeps
# the PostgreSQL connections neonize leaves open per failed connect (one each; see RESULTS.md)
# well below the embedded server's max_connections (200) at 50 sessions.
RECONNECT_BASE_SECONDS = 10.0
# WORKAROUND (see RESULTS.md, "Problems found"): with the default heartbeat timeout (10 s), 50
# workers starting at once on 2 cores are killed as "not answering" while they import neonize,
# and their restarts keep the storm going. Memory is what we measure here, so the bench gives
# starting workers more time; the supervisor's own default is left as it is.
HEARTBEAT_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
WORKER_DIED = "worker process ended"  # how the supervisor words a worker's death
BENCH_APPLICATION = "wagate-bench"  # application_name of the bench's own pool connections

# Bare processes measured alongside, each alone, after it printed "ready".
BASELINES = {
    "python (bare interpreter)": "pass",
    "python + import neonize": "import neonize",
    "python + worker modules (sessions.worker, runtime, fake)": (
        "import sessions.worker, sessions.runtime, sessions.fake_client"
    ),
}


class Infeasible(Exception):
    """A configuration could not be measured; the reason is recorded instead of a number."""


@dataclass(frozen=True)
class Layout:
    driver: Driver
    sessions: int
    per_worker: int

    @property
    def workers(self) -> int:
        return -(-self.sessions // self.per_worker)

    @property
    def label(self) -> str:
        return f"{self.driver}-n{self.sessions}-k{self.per_worker}"


def matrix(quick: bool) -> list[Layout]:
    """Every configuration of a run. N=1 is the same for every packing, so it runs once."""
    counts = (1, 10) if quick else (1, 10, 50)
    layouts = []
    drivers: tuple[Driver, ...] = ("fake", "neonize")
    for driver in drivers:
        layouts.append(Layout(driver, 1, 1))
        for n in counts[1:]:
            layouts.append(Layout(driver, n, 1))
            layouts.append(Layout(driver, n, DENSE))
        if not quick:
            layouts.append(Layout(driver, max(counts), GROUPED))
    return layouts


# -- memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    processes: int
    pss: int
    pss_anon: int  # heap, stacks: the memory that is really each process's own
    pss_file: int  # its share of mapped files (python, libpython, neonize's Go library, ...)
    uss: int
    rss: int
    threads: int

    def mb(self) -> dict[str, float | int]:
        return {
            "processes": self.processes,
            "pss_mb": round(self.pss / MB, 1),
            "pss_anon_mb": round(self.pss_anon / MB, 1),
            "pss_file_mb": round(self.pss_file / MB, 1),
            "uss_mb": round(self.uss / MB, 1),
            "rss_mb": round(self.rss / MB, 1),
            "threads": self.threads,
        }


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in bytes: Rss, Pss, Pss_Anon, Pss_File, Private_Dirty, ..."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB":
            values[key] = int(fields[0]) * 1024
    return values


def memory_of(pids: Iterable[int]) -> Memory:
    """Summed memory of these processes (those that exited meanwhile are left out).

    Pss_Anon is the part of PSS that other processes on the machine cannot change: a file's
    pages are shared with whoever else maps it (another worker, or a test suite running
    meanwhile), which moves Pss_File and USS by up to ~10 MB for a lone worker."""
    count = pss = anon = file = uss = rss = threads = 0
    for pid in pids:
        try:
            rollup = smaps_rollup(pid)
            threads += psutil.Process(pid).num_threads()
        except (OSError, psutil.NoSuchProcess):
            continue
        count += 1
        pss += rollup["Pss"]
        anon += rollup.get("Pss_Anon", 0)
        file += rollup.get("Pss_File", 0)
        uss += rollup["Private_Clean"] + rollup["Private_Dirty"]
        rss += rollup["Rss"]
    return Memory(count, pss, anon, file, uss, rss, threads)


def other_neonize_processes(ours: set[int]) -> list[int]:
    """Processes outside this measurement that map neonize's Go library (a test suite running
    meanwhile, say): they take a share of its pages, which lowers our PSS a little."""
    spec = importlib.util.find_spec("neonize")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return []
    package = os.path.realpath(next(iter(spec.submodule_search_locations)))
    marker = os.path.join(package, "neonize-")  # /proc/PID/maps shows resolved paths
    found = []
    for pid in psutil.pids():
        if pid in ours or pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/maps").read_text():
                found.append(pid)
    return found


async def measure_baselines() -> list[dict[str, Any]]:
    env = {**os.environ, "NEONIZE_BOT_TAG": "off"}  # as in a worker
    results = []
    for name, imports in BASELINES.items():
        code = f"{imports}\nprint('ready', flush=True)\nimport time\ntime.sleep(600)"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"baseline {name!r} did not start (exit {proc.returncode})")
            await asyncio.sleep(2.0)  # background threads (neonize's log thread) settle
            memory = memory_of([proc.pid])
            others = other_neonize_processes({proc.pid})
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        results.append(
            {"name": name, "code": imports, **memory.mb(), "other_neonize_processes": len(others)}
        )
    return results


# -- PostgreSQL --------------------------------------------------------------------------------


class Server:
    """The PostgreSQL server that holds the scratch databases."""

    def __init__(self, root: Path) -> None:
        self.given = os.environ.get("WAGATE_DATABASE_URL")
        self._embedded = None if self.given else EmbeddedPostgres(root / "pg", database="postgres")
        self.admin_url = self.given or ""

    @property
    def description(self) -> str:
        return "WAGATE_DATABASE_URL" if self.given else "embedded PostgreSQL (private, this run)"

    def start(self) -> None:
        if self._embedded is not None:
            self.admin_url = self._embedded.start()

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()

    async def create_database(self) -> str:
        name = f"wagate_bench_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def session_backends(pool: asyncpg.Pool) -> list[int]:
    """PIDs of this database's backends other than the bench's (i.e. the sessions' own)."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name IS DISTINCT FROM $1",
        BENCH_APPLICATION,
    )
    return [row["pid"] for row in rows]


# -- watching sessions -------------------------------------------------------------------------


class StateWatch:
    """The supervisor's emit hook, used only to see every state change as it happens."""

    def __init__(self) -> None:
        self.state: dict[int, str] = {}
        self.error: dict[int, str | None] = {}
        self.entered: dict[int, Counter[str]] = defaultdict(Counter)
        self.worker_deaths = 0
        self.last_change = time.monotonic()

    async def __call__(
        self, name: str, owner: int, sid: int | None, payload: dict[str, Any]
    ) -> None:
        if name != "session-state" or sid is None:
            return
        self.state[sid] = payload["state"]
        self.error[sid] = payload.get("error")
        if (payload.get("error") or "").startswith(WORKER_DIED):
            self.worker_deaths += 1  # not a connect failure of the session itself
        else:
            self.entered[sid][payload["state"]] += 1
        self.last_change = time.monotonic()

    def count_in(self, sids: list[int], state: str) -> int:
        return sum(1 for sid in sids if self.state.get(sid) == state)

    def count_entered(self, sids: list[int], state: str, times: int) -> int:
        return sum(1 for sid in sids if self.entered[sid][state] >= times)

    def terminal(self, sids: list[int]) -> list[str]:
        return [
            f"session {sid}: {self.state[sid]} ({self.error.get(sid)})"
            for sid in sids
            if self.state.get(sid) in TERMINAL_STATES
        ]


async def wait_until(
    done: Callable[[], int],
    total: int,
    watch: StateWatch,
    sids: list[int],
    *,
    timeout: float,
    what: str,
) -> float:
    """Wait for `done()` to reach `total`; the seconds it took. Fails fast on a dead session."""
    started = time.monotonic()
    while (reached := done()) < total:
        if dead := watch.terminal(sids):
            raise Infeasible(f"while waiting for {what}: " + "; ".join(dead[:3]))
        if time.monotonic() - started > timeout:
            raise Infeasible(
                f"timed out after {timeout:.0f} s waiting for {what}: {reached}/{total}"
            )
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def wait_quiet(watch: StateWatch, seconds: float, timeout: float) -> None:
    started = time.monotonic()
    while (quiet := time.monotonic() - watch.last_change) < seconds:
        if time.monotonic() - started > timeout:
            raise Infeasible(f"states still changing after {timeout:.0f} s")
        await asyncio.sleep(max(0.1, seconds - quiet))


# -- one configuration -------------------------------------------------------------------------


def worker_pids(supervisor: SessionSupervisor, sids: list[int]) -> set[int]:
    return {pid for sid in sids if (pid := supervisor.worker_pid(sid)) is not None}


async def measure_phase(
    phase: str,
    layout: Layout,
    supervisor: SessionSupervisor,
    watch: StateWatch,
    sids: list[int],
    pool: asyncpg.Pool,
    ready_seconds: float,
) -> dict[str, Any]:
    pids = worker_pids(supervisor, sids)
    if len(pids) != layout.workers:
        raise Infeasible(f"{len(pids)} worker processes, expected {layout.workers}")
    deaths = watch.worker_deaths
    samples = []
    for index in range(SAMPLES):
        if index:
            await asyncio.sleep(SAMPLE_GAP_SECONDS)
        workers = memory_of(pids)
        backends = memory_of(await session_backends(pool))
        samples.append((workers, backends))
    workers, backends = sorted(samples, key=lambda s: s[0].pss)[len(samples) // 2]  # median
    restarts = sum(s.restarts for s in supervisor.all_stats().values())
    others = other_neonize_processes(pids)
    # A worker that died (and restarted) while being sampled makes the samples meaningless.
    stable = watch.worker_deaths == deaths and worker_pids(supervisor, sids) == pids
    return {
        "phase": phase,
        "ready_seconds": round(ready_seconds, 1),
        "workers": workers.mb(),
        "pss_per_session_mb": round(workers.pss / layout.sessions / MB, 2),
        "pg_backends": backends.mb(),
        "pss_samples_mb": [round(w.pss / MB, 1) for w, _ in samples],
        "worker_restarts": restarts,
        "stable": stable,
        "other_neonize_processes": len(others),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


async def exercise(
    layout: Layout,
    supervisor: SessionSupervisor,
    watch: StateWatch,
    sids: list[int],
    pool: asyncpg.Pool,
    data_dir: Path,
) -> list[dict[str, Any]]:
    """Bring the sessions to their idle state(s) and measure each."""
    n = len(sids)

    async def measure(phase: str, ready: float) -> dict[str, Any]:
        return await measure_phase(phase, layout, supervisor, watch, sids, pool, ready)

    start_timeout = 60.0 + 4.0 * n
    phases = []
    started = time.monotonic()
    await supervisor.start()
    if layout.driver == "fake":
        await wait_until(
            lambda: watch.count_in(sids, "qr_required"),
            n,
            watch,
            sids,
            timeout=start_timeout,
            what="every session to show a QR code",
        )
        ready = time.monotonic() - started
        await wait_quiet(watch, SETTLE_SECONDS, timeout=60)
        phases.append(await measure("qr_required", ready))
        server = FakeWhatsApp(data_dir / "fake-wa")
        scanned = time.monotonic()
        for sid in sids:
            Phone(server, sid).scan()
        await wait_until(
            lambda: watch.count_in(sids, "connected"),
            n,
            watch,
            sids,
            timeout=start_timeout,
            what="every session to connect after the scan",
        )
        ready = time.monotonic() - scanned
        await wait_quiet(watch, SETTLE_SECONDS, timeout=60)
        phases.append(await measure("connected", ready))
    else:
        # Offline, states never stop changing (each retry is connecting -> reconnecting): wait
        # for every session to have failed twice (a retry built a second client), then settle.
        await wait_until(
            lambda: watch.count_entered(sids, "reconnecting", 2),
            n,
            watch,
            sids,
            timeout=start_timeout + 4 * RECONNECT_BASE_SECONDS,
            what="every session to fail its connect twice",
        )
        ready = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECONDS)
        phase = await measure("offline_retrying", ready)
        phase["connect_failures"] = sum(watch.entered[sid]["reconnecting"] for sid in sids)
        phases.append(phase)
    return phases


async def run_layout(layout: Layout, server: Server, root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {**asdict(layout), "workers": layout.workers}
    data_dir = root / layout.label
    data_dir.mkdir(parents=True)
    database = await server.create_database()
    url = with_database(server.admin_url, database)
    seen: set[int] = set()
    try:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=8, server_settings={"application_name": BENCH_APPLICATION}
        )
        try:
            async with pool.acquire() as conn:
                await migrate.migrate(conn)
            user = await users_db.create(pool, email="bench@example.com", password_hash="-")
            assert user is not None
            sids = [
                (await sessions_db.create(pool, owner_id=user.id, name=f"bench {i}")).id
                for i in range(layout.sessions)
            ]
            watch = StateWatch()
            config = SupervisorConfig(
                driver=layout.driver,
                data_dir=data_dir,
                store_url=device_store_url(url),
                sessions_per_worker=layout.per_worker,
                spool_sync="flush",
                reconnect_base=RECONNECT_BASE_SECONDS,
                reconnect_cap=60.0,
                qr_first=600.0,  # longer than any measurement: no code expires meanwhile
                qr_next=60.0,
                log_level="warning",
                heartbeat_timeout=HEARTBEAT_TIMEOUT_SECONDS,
            )
            supervisor = SessionSupervisor(pool, config, emit=watch)
            started = time.monotonic()
            try:
                result["phases"] = await exercise(layout, supervisor, watch, sids, pool, data_dir)
            except Infeasible as exc:
                result["error"] = str(exc)
            finally:
                seen = worker_pids(supervisor, sids)
                stopping = time.monotonic()
                await supervisor.stop(timeout=STOP_TIMEOUT_SECONDS)
                result["stop_seconds"] = round(time.monotonic() - stopping, 1)
                result["seconds"] = round(time.monotonic() - started, 1)
                result["worker_deaths"] = watch.worker_deaths
        finally:
            await pool.close()
    finally:
        await server.drop_database(database)
        shutil.rmtree(data_dir, ignore_errors=True)
    leftovers = sorted(pid for pid in seen if process_alive(pid))
    if leftovers:
        result["leftover_workers"] = leftovers
        for pid in leftovers:  # never leave processes behind, but say it happened
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
    return result


# -- the whole run -----------------------------------------------------------------------------


def marginal(layouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memory per additional session for each packing.

    The issue's measure is the PSS slope from 1 session to the largest count. Beside it: the
    slope from 10 sessions (the lone worker's share of file pages, which depends on whatever
    else maps them at that moment, cancels out) and the slope of anonymous memory alone."""
    points: dict[tuple[str, str, int], dict[int, dict[str, float]]] = defaultdict(dict)
    for layout in layouts:
        for phase in layout.get("phases", []):
            packings = {layout["per_worker"]} if layout["sessions"] > 1 else {1, GROUPED, DENSE}
            for per_worker in packings:  # 1 session is the starting point of every packing
                key = (layout["driver"], phase["phase"], per_worker)
                points[key][layout["sessions"]] = phase["workers"]

    def slope(by_n: dict[int, dict[str, float]], low: int, high: int, field: str) -> float | None:
        if low not in by_n or high not in by_n or high <= low:
            return None
        return round((by_n[high][field] - by_n[low][field]) / (high - low), 2)

    slopes = []
    for (driver, phase, per_worker), by_n in sorted(points.items()):
        top = max(by_n)
        if top == 1:
            continue
        slopes.append(
            {
                "driver": driver,
                "phase": phase,
                "per_worker": per_worker,
                "to_sessions": top,
                "mb_per_additional_session": slope(by_n, 1, top, "pss_mb"),
                "pss_mb_per_session_from_10": slope(by_n, 10, top, "pss_mb"),
                "anon_mb_per_session_from_1": slope(by_n, 1, top, "pss_anon_mb"),
            }
        )
    return slopes


def verdict(slopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    densest = max((s["per_worker"] for s in slopes), default=0)
    return [
        {**s, "target_mb": TARGET_MB, "pass": s["mb_per_additional_session"] <= TARGET_MB}
        for s in slopes
        if s["per_worker"] == densest
    ]


def source_fingerprint() -> str:
    """A hash of the code the workers run: a run during which it changed is not one run."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("sessions/*.py"), *REPO.glob("db/*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


async def run_async(quick: bool) -> dict[str, Any]:
    fingerprint = source_fingerprint()
    root = Path(tempfile.mkdtemp(prefix="wagate-bench-"))
    server = Server(root)
    try:
        await asyncio.to_thread(server.start)
        print("baselines ...", flush=True)
        baselines = await measure_baselines()
        layouts = []
        for layout in matrix(quick):
            print(
                f"{layout.label}: {layout.sessions} sessions, {layout.per_worker} per worker, "
                f"{layout.workers} worker(s) ...",
                flush=True,
            )
            outcome = await run_layout(layout, server, root)
            for phase in outcome.get("phases", []):
                print(
                    f"  {phase['phase']}: {phase['workers']['pss_mb']} MB PSS "
                    f"({phase['pss_per_session_mb']} MB per session)"
                    + ("" if phase["stable"] else ", UNSTABLE: a worker died while sampled"),
                    flush=True,
                )
            if "error" in outcome:
                print(f"  not measured: {outcome['error']}", flush=True)
            layouts.append(outcome)
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)
    slopes = marginal(layouts)
    changed = source_fingerprint() != fingerprint
    if changed:
        print("WARNING: sessions/ or db/ changed during the run; run it again", flush=True)
    return {
        "database": server.description,
        "source_fingerprint": fingerprint,
        "source_changed_during_run": changed,
        "settings": {
            "settle_seconds": SETTLE_SECONDS,
            "samples": SAMPLES,
            "sample_gap_seconds": SAMPLE_GAP_SECONDS,
            "reconnect_base_seconds": RECONNECT_BASE_SECONDS,
            "spool_sync": "flush",
            "target_mb_per_additional_session": TARGET_MB,
        },
        "baselines": baselines,
        "layouts": layouts,
        "marginal": slopes,
        "verdict": verdict(slopes),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(run_async(quick=args.quick))


# -- the Markdown summary ----------------------------------------------------------------------


def packing(per_worker: int, sessions: int) -> str:
    if sessions == 1:
        return "1 (any packing)"
    return "all in one" if per_worker >= sessions else str(per_worker)


def report(result: dict[str, Any]) -> str:
    lines = [
        "Baselines (each process alone):",
        "",
        "| process | PSS MB | PSS anon MB | USS MB | RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for b in result["baselines"]:
        lines.append(
            f"| {b['name']} | {b['pss_mb']} | {b['pss_anon_mb']} | {b['uss_mb']} | {b['rss_mb']} |"
        )
    lines += [
        "",
        "Idle sessions (all worker processes summed; PG = PostgreSQL backends the workers opened;",
        "ready = seconds from start, or from the scan, until every session was in that state):",
        "",
        "| driver | state | sessions | per worker | workers | PSS MB | PSS/session MB "
        "| PSS anon MB | USS MB | RSS MB | threads | PG backends | PG PSS MB | ready s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shared_with_others = []
    for layout in result["layouts"]:
        head = (
            f"| {layout['driver']} | {{}} | {layout['sessions']} "
            f"| {packing(layout['per_worker'], layout['sessions'])} | {layout['workers']} |"
        )
        for phase in layout.get("phases", []):
            w, pg = phase["workers"], phase["pg_backends"]
            state = phase["phase"] + ("" if phase["stable"] else " (UNSTABLE)")
            lines.append(
                head.format(state)
                + f" {w['pss_mb']} | {phase['pss_per_session_mb']} | {w['pss_anon_mb']} "
                f"| {w['uss_mb']} | {w['rss_mb']} | {w['threads']} | {pg['processes']} "
                f"| {pg['pss_mb']} | {phase['ready_seconds']} |"
            )
            if phase.get("other_neonize_processes"):
                shared_with_others.append(
                    f"{layout['driver']}/{phase['phase']}/n{layout['sessions']}"
                    f"/k{layout['per_worker']}"
                )
        if "error" in layout:
            lines.append(head.format("not measured") + f" {layout['error']} |" + " |" * 8)
    if shared_with_others:
        lines += [
            "",
            "Measured while other processes mapped neonize's library (they take a share of its "
            "pages): " + ", ".join(shared_with_others),
        ]
    lines += [
        "",
        "Memory per additional session (MB; slopes between session counts of one packing):",
        "",
        "| driver | state | per worker | PSS, 1 -> max | PSS, 10 -> max | PSS anon, 1 -> max |",
        "|---|---|---|---:|---:|---:|",
    ]
    for m in result["marginal"]:
        from_10 = m["pss_mb_per_session_from_10"]
        lines.append(
            f"| {m['driver']} | {m['phase']} | {packing(m['per_worker'], m['to_sessions'])} "
            f"| {m['mb_per_additional_session']} | {'n/a' if from_10 is None else from_10} "
            f"| {m['anon_mb_per_session_from_1']} |"
        )
    lines += ["", f"Target (densest packing): <= {TARGET_MB:g} MB PSS per additional session."]
    for v in result["verdict"]:
        mark = "PASS" if v["pass"] else "FAIL"
        lines.append(
            f"- {v['driver']} / {v['phase']}: {v['mb_per_additional_session']} MB -> {mark}"
        )
    if result.get("source_changed_during_run"):
        lines += ["", "WARNING: sessions/ or db/ changed during the run: run it again."]
    return "\n".join(lines)
