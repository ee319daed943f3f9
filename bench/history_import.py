"""History sync import speed: `db.history.import_history` against the physical limit.

The physical limit for our schema is what PostgreSQL itself needs to bring the same rows into the
real, fully indexed `messages` table the way an idempotent import must: ONE binary COPY into a
temporary staging table plus ONE `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, in one
transaction, the rows already encoded (tuples ready for COPY, `raw` already JSON text) and the
conversations already there. Measured in the same run, on the same server:

- limit:      that, for all messages at once (the definition of the target);
- limit_chunked: the same statements per chunk of CHUNK rows, one transaction each: the
              stricter bound for a chunked import (a staging table of one chunk stays in
              `temp_buffers`; one of 200,000 rows does not);
- import:     `import_history` as the gateway runs it: chunks of CHUNK messages, one transaction
              each, conversations included (created by the import), starting from the frozen
              row objects, so encoding and every statement of ours count;
- re-import:  the same chunks once more (everything already stored: nothing may change);
- executemany: asyncpg `executemany` of the per-message INSERT of the live path, for scale;
- live:       the import again while a second connection stores a live message every LIVE_GAP
              seconds the way the live path does, in the same event loop: how long live writes
              take meanwhile, and how late the loop runs.

Every measurement starts from a fresh copy of a migrated database (every index of the production
schema) after a CHECKPOINT; limit and import alternate over ROUNDS rounds and the median counts.

PostgreSQL: a private embedded server for the run (unless WAGATE_DATABASE_URL names a server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from bench.common import with_database
from db import conversations as conversations_db
from db import history, migrate
from db import messages as messages_db
from db import pool as pool_db
from db import sessions as sessions_db
from db import users as users_db
from db.embedded import EmbeddedPostgres
from db.history import HistoryConversationRow, HistoryMessageRow

TARGET_RATIO = 0.7  # import / limit
TARGET_RATE = 30_000  # messages per second
CHUNK = 10_000
LIVE_GAP = 0.01  # seconds between two live messages in the live-traffic measurement
FULL = {"messages": 200_000, "chats": 2_000, "rounds": 5}
QUICK = {"messages": 20_000, "chats": 200, "rounds": 1}
SEED = 20240301
T = TypeVar("T")

# The encoding db.history sends, so the limit moves the very same bytes.
_encode_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

# fmt: off
_WORDS = (
    "hola", "que", "tal", "bien", "gracias", "nos", "vemos", "mañana", "ok", "sí", "no",
    "claro", "perfecto", "dónde", "estás", "llego", "en", "diez", "minutos", "mando", "el",
    "archivo", "revisa", "la", "factura", "pedido", "entregado", "precio", "cuánto", "cuesta",
    "the", "meeting", "is", "at", "five", "please", "call", "me", "back", "thanks", "see",
    "you", "soon", "👍", "😂", "🙏", "❤️", "photo", "docs",
)
# fmt: on
_MEDIA = (
    ("image", "image/jpeg", None, (40_000, 400_000)),
    ("video", "video/mp4", None, (500_000, 15_000_000)),
    ("audio", "audio/ogg; codecs=opus", None, (5_000, 300_000)),
    ("document", "application/pdf", "factura-{n}.pdf", (20_000, 2_000_000)),
    ("sticker", "image/webp", None, (8_000, 60_000)),
)

_LIMIT_STAGING = """
CREATE TEMPORARY TABLE limit_staging (
    conversation_id bigint NOT NULL, wa_message_id text NOT NULL, direction text NOT NULL,
    sender_type text NOT NULL, sender_jid text, sender_name text, message_type text NOT NULL,
    text_content text, media_sha256 text, media_mime text, media_size bigint,
    media_filename text, media_status text, quoted_wa_message_id text, raw text,
    status text NOT NULL, sent_at timestamptz NOT NULL
) ON COMMIT DROP
"""
_LIMIT_COLUMNS = (
    "conversation_id",
    "wa_message_id",
    "direction",
    "sender_type",
    "sender_jid",
    "sender_name",
    "message_type",
    "text_content",
    "media_sha256",
    "media_mime",
    "media_size",
    "media_filename",
    "media_status",
    "quoted_wa_message_id",
    "raw",
    "status",
    "sent_at",
)
_INSERT_COLUMNS = """session_id, conversation_id, wa_message_id, direction, sender_type,
    sender_jid, sender_name, message_type, text_content, media_sha256, media_mime, media_size,
    media_filename, media_status, quoted_wa_message_id, raw, status, from_history, sent_at"""
_LIMIT_INSERT = f"""
INSERT INTO messages ({_INSERT_COLUMNS})
SELECT $1, conversation_id, wa_message_id, direction, sender_type, sender_jid, sender_name,
       message_type, text_content, media_sha256, media_mime, media_size, media_filename,
       media_status, quoted_wa_message_id, raw::jsonb, status, true, sent_at
FROM limit_staging
ON CONFLICT (session_id, wa_message_id) WHERE wa_message_id IS NOT NULL DO NOTHING
"""
_EXECUTEMANY = f"""
INSERT INTO messages ({_INSERT_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb, $17, true,
        $18)
ON CONFLICT (session_id, wa_message_id) WHERE wa_message_id IS NOT NULL DO NOTHING
"""
_CONVERSATIONS = """
INSERT INTO conversations (session_id, external_id, lid, kind, contact_name, wa_user_id,
                           unread_count, last_message_at)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::integer[], $8::timestamptz[])
RETURNING id, external_id
"""


# -- synthetic history -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    chats: list[HistoryConversationRow]
    chunks: list[tuple[list[HistoryConversationRow], list[HistoryMessageRow]]]
    messages: list[HistoryMessageRow]

    def sizes(self) -> dict[str, Any]:
        raw = [len(_encode_json(m.raw)) for m in self.messages[:20_000] if m.raw is not None]
        text = [len(m.text_content or "") for m in self.messages[:20_000]]
        media = sum(1 for m in self.messages if m.media_mime)
        return {
            "messages": len(self.messages),
            "chats": len(self.chats),
            "groups": sum(1 for c in self.chats if c.kind == "group"),
            "chunks": len(self.chunks),
            "messages_per_chunk": CHUNK,
            "largest_chat": max(Counter(m.external_id for m in self.messages).values()),
            "media_share": round(media / len(self.messages), 3),
            "raw_json_bytes_mean": round(statistics.fmean(raw)),
            "text_chars_mean": round(statistics.fmean(text)),
        }


def _text(rng: random.Random) -> str:
    roll = rng.random()
    words = rng.randint(1, 8) if roll < 0.6 else rng.randint(10, 30) if roll < 0.9 else 60
    return " ".join(rng.choices(_WORDS, k=words))


def _hex(rng: random.Random, chars: int) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}X}"


def generate(messages: int, chats: int, seed: int = SEED) -> Dataset:
    """`messages` spread over `chats` (a few busy chats, a long tail; 10% groups)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(chats)]
    scale = messages / sum(weights)
    counts = [max(1, int(w * scale)) for w in weights]
    counts[0] += messages - sum(counts)
    now = datetime(2025, 6, 1, tzinfo=UTC)
    out: list[HistoryMessageRow] = []
    rows: list[HistoryConversationRow] = []
    for n, count in enumerate(counts):
        group = n % 10 == 9
        phone = f"52155{n:08d}"
        jid = f"1203630{n:011d}@g.us" if group else f"{phone}@s.whatsapp.net"
        name = f"Grupo {n}" if group else f"Contacto {n}"
        members = [f"52166{rng.randint(0, 99_999_999):08d}@s.whatsapp.net" for _ in range(8)]
        start = now - timedelta(days=rng.randint(30, 700))
        step = (now - start) / count
        previous: str | None = None
        for i in range(count):
            sent = start + step * i + timedelta(seconds=rng.randint(0, 59))
            inbound = rng.random() < 0.55
            sender = (rng.choice(members) if group else jid) if inbound else None
            wa_id = "3EB0" + _hex(rng, 16)
            text: str | None = _text(rng)
            kind, mime, filename, sha, size = "text", None, None, None, None
            if rng.random() < 0.15:
                kind, mime, pattern, (low, high) = rng.choice(_MEDIA)
                filename = pattern.format(n=i) if pattern else None
                sha, size = _hex(rng, 64).lower(), rng.randint(low, high)
                text = text if rng.random() < 0.3 else None
            quoted = previous if previous and rng.random() < 0.1 else None
            key: dict[str, Any] = {"remoteJid": jid, "fromMe": not inbound, "id": wa_id}
            if group and sender:
                key["participant"] = sender
            body: dict[str, Any]
            if mime:
                body = {
                    f"{kind}Message": {
                        "url": f"https://mmg.whatsapp.net/v/t62.7118-24/{_hex(rng, 24)}.enc",
                        "mimetype": mime,
                        "fileSha256": sha,
                        "fileLength": size,
                        "mediaKey": _hex(rng, 44),
                        **({"caption": text} if text else {}),
                    }
                }
            elif quoted:
                body = {"extendedTextMessage": {"text": text, "contextInfo": {"stanzaId": quoted}}}
            else:
                body = {"conversation": text}
            raw = {
                "key": key,
                "messageTimestamp": int(sent.timestamp()),
                "pushName": name if inbound else "Yo",
                "status": "READ" if inbound else "DELIVERY_ACK",
                "message": body,
                "messageSecret": _hex(rng, 44),
            }
            out.append(
                HistoryMessageRow(
                    external_id=jid,
                    wa_message_id=wa_id,
                    direction="inbound" if inbound else "outbound",
                    sender_type="user" if inbound else "owner",
                    sender_jid=sender,
                    sender_name=name if inbound else None,
                    message_type=kind,
                    text_content=text,
                    media_sha256=sha,
                    media_mime=mime,
                    media_size=size,
                    media_filename=filename,
                    media_status="pending" if mime else None,
                    quoted_wa_message_id=quoted,
                    raw=raw,
                    status="received" if inbound else "read",
                    sent_at=sent,
                )
            )
            previous = wa_id
        rows.append(
            HistoryConversationRow(
                external_id=jid,
                lid=None if group else f"{10**14 + n}@lid",
                kind="group" if group else "direct",
                contact_name=name,
                wa_user_id=None if group else phone,
                unread_count=rng.choice((0, 0, 0, 1, 3)),
                last_message_at=out[-1].sent_at,
            )
        )
    by_id = {c.external_id: c for c in rows}
    chunks = []
    for at in range(0, len(out), CHUNK):
        part = out[at : at + CHUNK]
        named = list(dict.fromkeys(m.external_id for m in part))
        chunks.append(([by_id[e] for e in named], part))
    return Dataset(chats=rows, chunks=chunks, messages=out)


# -- PostgreSQL --------------------------------------------------------------------------------


class Server:
    """The server of the run and a migrated template every measurement is copied from."""

    def __init__(self, root: Path) -> None:
        self.given = os.environ.get("WAGATE_DATABASE_URL")
        self._embedded = None if self.given else EmbeddedPostgres(root / "pg", database="postgres")
        self.admin_url = self.given or ""
        self.template = f"wagate_bench_tpl_{uuid.uuid4().hex[:8]}"

    @property
    def description(self) -> str:
        return "WAGATE_DATABASE_URL" if self.given else "embedded PostgreSQL (private, this run)"

    async def start(self) -> None:
        if self._embedded is not None:
            self.admin_url = await asyncio.to_thread(self._embedded.start)
        await self._admin(f'CREATE DATABASE "{self.template}"')
        conn = await asyncpg.connect(with_database(self.admin_url, self.template))
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()

    async def stop(self) -> None:
        try:
            if self.admin_url:
                await self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        finally:
            if self._embedded is not None:
                await asyncio.to_thread(self._embedded.stop)

    async def _admin(self, sql: str) -> Any:
        conn = await asyncpg.connect(self.admin_url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def settings(self) -> dict[str, str]:
        names = ("server_version", "shared_buffers", "synchronous_commit", "fsync", "wal_level")
        conn = await asyncpg.connect(self.admin_url)
        try:
            return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
        finally:
            await conn.close()

    async def fresh(self, measure: Callable[[Scratch], Awaitable[T]]) -> T:
        """Run `measure` on a fresh copy of the migrated database (a user and a session in it)."""
        name = f"wagate_bench_{uuid.uuid4().hex[:10]}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        url = with_database(self.admin_url, name)
        try:
            conn = await asyncpg.connect(url)
            try:
                user = await users_db.create(conn, email="bench@example.com", password_hash="x")
                assert user is not None
                session = await sessions_db.create(conn, owner_id=user.id, name="bench")
                await conn.execute("CHECKPOINT")
                return await measure(Scratch(conn=conn, session_id=session.id, url=url))
            finally:
                await conn.close()
        finally:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Scratch:
    conn: asyncpg.Connection
    session_id: int
    url: str


# -- the measurements --------------------------------------------------------------------------


async def _create_conversations(
    conn: asyncpg.Connection, session_id: int, data: Dataset
) -> dict[str, int]:
    c = data.chats
    rows = await conn.fetch(
        _CONVERSATIONS,
        session_id,
        [x.external_id for x in c],
        [x.lid for x in c],
        [x.kind for x in c],
        [x.contact_name for x in c],
        [x.wa_user_id for x in c],
        [x.unread_count for x in c],
        [x.last_message_at for x in c],
    )
    return {r["external_id"]: int(r["id"]) for r in rows}


def _encoded(data: Dataset, ids: dict[str, int]) -> list[tuple[Any, ...]]:
    return [
        (
            ids[m.external_id],
            m.wa_message_id,
            m.direction,
            m.sender_type,
            m.sender_jid,
            m.sender_name,
            m.message_type,
            m.text_content,
            m.media_sha256,
            m.media_mime,
            m.media_size,
            m.media_filename,
            m.media_status,
            m.quoted_wa_message_id,
            _encode_json(m.raw) if m.raw is not None else None,
            m.status,
            m.sent_at,
        )
        for m in data.messages
    ]


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM messages"))


async def measure_limit(db: Scratch, data: Dataset, *, chunk: int | None = None) -> float:
    """COPY + INSERT of the pre-encoded rows: all at once, or per `chunk` in a transaction each."""
    conn = db.conn
    records = _encoded(data, await _create_conversations(conn, db.session_id, data))
    await conn.execute("CHECKPOINT")
    step = chunk or len(records)
    started = time.perf_counter()
    for at in range(0, len(records), step):
        async with conn.transaction():
            await conn.execute(_LIMIT_STAGING)
            await conn.copy_records_to_table(
                "limit_staging", records=records[at : at + step], columns=_LIMIT_COLUMNS
            )
            await conn.execute(_LIMIT_INSERT, db.session_id)
    elapsed = time.perf_counter() - started
    assert await _count(conn) == len(records)
    return elapsed


async def _import_all(db: Scratch, data: Dataset, retries: list[int] | None = None) -> int:
    inserted = 0
    for chats, messages in data.chunks:
        while True:
            try:
                async with db.conn.transaction():
                    result = await history.import_history(db.conn, db.session_id, chats, messages)
                break
            except asyncpg.LockNotAvailableError:
                if retries is None:
                    raise
                retries.append(1)  # the chunk gave way to a live write: import it again
        inserted += result.inserted
    return inserted


async def measure_import(db: Scratch, data: Dataset) -> tuple[float, float]:
    """(seconds to import every chunk, seconds to import them all again)."""
    started = time.perf_counter()
    inserted = await _import_all(db, data)
    elapsed = time.perf_counter() - started
    assert inserted == len(data.messages) == await _count(db.conn)
    versions = "SELECT sum(xmin::text::bigint) FROM conversations"
    before = await db.conn.fetchval(versions)
    started = time.perf_counter()
    assert await _import_all(db, data) == 0
    again = time.perf_counter() - started
    assert await db.conn.fetchval(versions) == before, "a re-import rewrote conversations"
    return elapsed, again


async def measure_executemany(db: Scratch, data: Dataset) -> float:
    ids = await _create_conversations(db.conn, db.session_id, data)
    records = [(db.session_id, *r) for r in _encoded(data, ids)]
    await db.conn.execute("CHECKPOINT")
    started = time.perf_counter()
    async with db.conn.transaction():
        await db.conn.executemany(_EXECUTEMANY, records)
    elapsed = time.perf_counter() - started
    assert await _count(db.conn) == len(records)
    return elapsed


async def _live_writer(
    db: Scratch, data: Dataset, latencies: list[float], stop: asyncio.Event
) -> None:
    """The live path's writes for one message (chat upsert + message insert, one transaction,
    with db.conversations.upsert_many and db.messages.insert_many as sessions.store does)."""
    conn = await pool_db.connect(db.url)
    try:
        stride = max(1, len(data.chats) // 97)
        n = 0
        while not stop.is_set():
            chat = data.chats[(n * stride) % len(data.chats)]
            now = datetime.now(UTC)
            started = time.perf_counter()
            touch = conversations_db.ChatTouch(
                external_id=chat.external_id,
                kind=chat.kind,
                contact_name=None,
                wa_user_id=chat.wa_user_id,
                lid=None,
                last_message_at=now,
                unread_inc=1,
            )
            async with conn.transaction():
                ids, _ = await conversations_db.upsert_many(conn, db.session_id, [touch])
                row = messages_db.NewMessage(
                    session_id=db.session_id,
                    conversation_id=ids[chat.external_id],
                    wa_message_id=f"LIVE{n:08d}",
                    direction="inbound",
                    sender_type="user",
                    sender_jid=chat.external_id,
                    sender_name=None,
                    message_type="text",
                    text_content="live",
                    media_sha256=None,
                    media_mime=None,
                    media_size=None,
                    media_filename=None,
                    media_status=None,
                    quoted_wa_message_id=None,
                    raw={"live": n},
                    status="received",
                    from_history=False,
                    sent_at=now,
                )
                await messages_db.insert_many(conn, db.session_id, [row])
            latencies.append(time.perf_counter() - started)
            n += 1
            await asyncio.sleep(LIVE_GAP)
    finally:
        await conn.close()


async def _loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


async def measure_live(db: Scratch, data: Dataset) -> dict[str, Any]:
    """The import with live traffic beside it, in the same event loop as in the gateway."""
    latencies: list[float] = []
    lags: list[float] = []
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_live_writer(db, data, latencies, stop))
        tasks.create_task(_loop_lag(lags, stop))
        await asyncio.sleep(0.2)
        quiet = len(latencies)
        started = time.perf_counter()
        retries: list[int] = []
        await _import_all(db, data, retries)
        elapsed = time.perf_counter() - started
        stop.set()
    during = sorted(latencies[quiet:])
    lags.sort()

    def ms(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    return {
        "import_seconds": round(elapsed, 3),
        "chunks_retried": len(retries),
        "live_writes": len(during),
        "live_write_ms": {"p50": ms(during, 0.5), "p99": ms(during, 0.99), "max": ms(during, 1)},
        "quiet_live_write_ms_p50": ms(sorted(latencies[:quiet]), 0.5),
        "event_loop_lag_ms": {"p99": ms(lags, 0.99), "max": ms(lags, 1)},
    }


def _rate(count: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "messages_per_s": round(count / seconds)}


async def run_async(quick: bool) -> dict[str, Any]:
    shape = QUICK if quick else FULL
    print(f"generating {shape['messages']:,} messages in {shape['chats']:,} chats ...", flush=True)
    data = generate(shape["messages"], shape["chats"])
    count = len(data.messages)
    root = Path(tempfile.mkdtemp(prefix="wagate-bench-"))
    server = Server(root)
    runs: dict[str, list[float]] = {k: [] for k in ("limit", "limit_chunked", "import", "reimport")}
    load_before = os.getloadavg()
    try:
        await server.start()
        pg = await server.settings()
        for n in range(shape["rounds"]):
            runs["limit"].append(await server.fresh(lambda db: measure_limit(db, data)))
            runs["limit_chunked"].append(
                await server.fresh(lambda db: measure_limit(db, data, chunk=CHUNK))
            )
            ours, again = await server.fresh(lambda db: measure_import(db, data))
            runs["import"].append(ours)
            runs["reimport"].append(again)
            print(
                f"  round {n + 1}: "
                + ", ".join(f"{k} {count / v[-1]:,.0f}/s" for k, v in runs.items()),
                flush=True,
            )
        print("  executemany ...", flush=True)
        runs["executemany"] = [await server.fresh(lambda db: measure_executemany(db, data))]
        print("  import beside live traffic ...", flush=True)
        live = await server.fresh(lambda db: measure_live(db, data))
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)
    median = {k: _rate(count, statistics.median(v)) for k, v in runs.items()}
    ours_s = median["import"]["seconds"]
    ratio = median["limit"]["seconds"] / ours_s
    ratio_chunked = median["limit_chunked"]["seconds"] / ours_s
    return {
        "database": server.description,
        "postgresql": pg,
        "dataset": data.sizes(),
        "rounds": shape["rounds"],
        "load_average_1m": {
            "before": round(load_before[0], 2),
            "after": round(os.getloadavg()[0], 2),
        },
        "seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "median": median,
        "ratio_import_to_limit": round(ratio, 3),
        "ratio_import_to_limit_chunked": round(ratio_chunked, 3),
        "live": live,
        "targets": {"ratio": TARGET_RATIO, "messages_per_s": TARGET_RATE},
        "pass": {
            "ratio": ratio >= TARGET_RATIO,
            "rate": median["import"]["messages_per_s"] >= TARGET_RATE,
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(run_async(quick=args.quick))


def report(result: dict[str, Any]) -> str:
    d, m = result["dataset"], result["median"]
    lines = [
        f"{d['messages']:,} messages in {d['chats']:,} chats ({d['groups']} groups), "
        f"chunks of {d['messages_per_chunk']:,}; raw JSON {d['raw_json_bytes_mean']} B and text "
        f"{d['text_chars_mean']} chars on average, {d['media_share']:.0%} media. "
        f"Median of {result['rounds']} round(s), "
        f"PostgreSQL {result['postgresql']['server_version']}; 1-minute load average "
        f"{result['load_average_1m']['before']} before, {result['load_average_1m']['after']} "
        "after.",
        "",
        "| path | seconds | messages/s | vs limit |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "limit": "physical limit: 1 COPY + 1 INSERT…SELECT…ON CONFLICT, one transaction",
        "limit_chunked": f"the same statements per chunk of {d['messages_per_chunk']:,}",
        "import": f"import_history, {d['chunks']} chunks, 1 transaction each, with conversations",
        "reimport": "import_history again, same chunks (all already stored)",
        "executemany": "asyncpg executemany of the per-message INSERT, one transaction",
    }
    limit = m["limit"]["seconds"]
    for key, label in names.items():
        row = m[key]
        lines.append(
            f"| {label} | {row['seconds']} | {row['messages_per_s']:,} "
            f"| {limit / row['seconds']:.2f} |"
        )
    live = result["live"]
    lw, lag = live["live_write_ms"], live["event_loop_lag_ms"]
    lines += [
        "",
        f"Beside live traffic (a live message every {LIVE_GAP * 1000:g} ms on a second "
        f"connection, same event loop): import {live['import_seconds']} s, "
        f"{live['chunks_retried']} chunk(s) retried after giving way; "
        f"{live['live_writes']} live writes took p50 {lw['p50']} ms, p99 {lw['p99']} ms, "
        f"max {lw['max']} ms (p50 {live['quiet_live_write_ms_p50']} ms before the import); "
        f"event-loop lag p99 {lag['p99']} ms, max {lag['max']} ms.",
    ]
    ok = result["pass"]
    lines += [
        "",
        f"- import / limit = {result['ratio_import_to_limit']} (target >= {TARGET_RATIO}): "
        f"{'PASS' if ok['ratio'] else 'FAIL'} "
        f"(against the chunked statements: {result['ratio_import_to_limit_chunked']})",
        f"- import rate = {m['import']['messages_per_s']:,}/s (target >= {TARGET_RATE:,}/s): "
        f"{'PASS' if ok['rate'] else 'FAIL'}",
    ]
    return "\n".join(lines)
