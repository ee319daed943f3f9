"""CloudService: the Cloud API path of one gateway process.

Owns the numbers cache, the Graph client, the webhook inbox (group commit + processor), media
downloads and each cloud session's state. Stores through `sessions.store`, exactly as WhatsApp
Web events are stored, and publishes the same bus events, so the inbox, Socket.IO and the
bridges can not tell the channels apart (except by the session's `channel`).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter

from db import cloud as cloud_db
from db import contacts as contacts_db
from db import messages as messages_db
from db import outbox as outbox_db
from db import sessions as sessions_db
from db import users as users_db
from db.cloud import PendingEvent
from gateway.bus import EventBus
from gateway.cloud import translate
from gateway.cloud.graph import AUTH_EXPIRED, GraphClient, GraphError
from gateway.cloud.inbox import GroupCommitter, InboxProcessor
from gateway.cloud.numbers import SECRET_PURPOSE, CloudNumber, CloudNumbers
from gateway.cloud.sender import CloudSender
from gateway.metrics import CHANNEL_CLOUD, Metrics
from gateway.security import SecretBox
from gateway.settings import Settings
from sessions import events
from sessions.backoff import Backoff
from sessions.ingest import POISON
from sessions.media import MediaStore
from sessions.store import (
    Changes,
    StoreOptions,
    store_events,
    store_history_chunk,
)

log = structlog.get_logger(__name__)

DECLINED_HISTORY = 2593109
PARSED_KEPT = 5000
MEDIA_ATTEMPTS = 3


async def _awaited(coro: Awaitable[Any]) -> Any:
    return await coro


class NumberTaken(Exception):
    """Another session already uses this phone number id."""


@dataclass
class Collected:
    """What a batch of webhook events says, per session."""

    messages: list[events.WaMessage] = field(default_factory=list)
    statuses: list[translate.Status] = field(default_factory=list)
    contacts: list[translate.ContactSync] = field(default_factory=list)
    history: list[events.HistoryChunk] = field(default_factory=list)
    history_errors: list[translate.HistoryError] = field(default_factory=list)
    templates: list[translate.TemplateUpdate] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outcome:
    changes: dict[int, Changes] = field(default_factory=dict)
    history: list[tuple[int, events.HistoryChunk, int, int]] = field(default_factory=list)
    history_errors: list[tuple[int, translate.HistoryError]] = field(default_factory=list)
    # Meta's out-of-band `value.errors`: (session, field, error text, code)
    errors: list[tuple[int, str, str, int | None]] = field(default_factory=list)
    contacts_changed: set[int] = field(default_factory=set)
    unknown_numbers: int = 0

    def of(self, sid: int) -> Changes:
        return self.changes.setdefault(sid, Changes())


STATUS_ORDER = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}


class CloudService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: EventBus,
        settings: Settings,
        http: aiohttp.ClientSession,
        *,
        registry: CollectorRegistry,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self.numbers = CloudNumbers(pool, SecretBox(settings.resolved_secret_key(), SECRET_PURPOSE))
        self.graph = GraphClient(http, settings.cloud_graph_url, settings.cloud_api_version)
        self.media = MediaStore(settings.media_path, int(settings.media_max_mb * 1024 * 1024))
        self.options = StoreOptions(keep_revoked=settings.keep_revoked)
        self.processor = InboxProcessor(pool, self._process)
        self.committer = GroupCommitter(
            pool, max_batch=settings.cloud_webhook_batch, committed=self.processor.wake
        )
        self.webhooks = Counter(
            "wagate_cloud_webhook_requests",
            "Incoming Cloud API webhook requests by outcome (stored, unknown_number, "
            "bad_signature, invalid, too_large, verified, verify_refused)",
            ["outcome"],
            registry=registry,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sender = CloudSender(self, settings.media_path)
        # Bodies this process parsed in the webhook and committed: the processor takes the
        # parsed payload instead of parsing the stored text again (another process, or one
        # started after a crash, parses it from the table).
        self._parsed: dict[str, dict[str, Any]] = {}

    def parsed(self, body: str, payload: dict[str, Any]) -> None:
        """Keep a body's parsed payload for the processor, set before its commit (the processor
        may take the event at once); the oldest go first when too many are kept (bodies another
        process processed)."""
        if len(self._parsed) >= PARSED_KEPT:
            self._parsed.pop(next(iter(self._parsed)))
        self._parsed[body] = payload

    def not_parsed(self, body: str) -> None:
        """The commit of `body` failed."""
        self._parsed.pop(body, None)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self, *, process: bool = True) -> None:
        await self.numbers.load()
        await self.bootstrap()
        if process:
            self.processor.start()
            for number in self.numbers.all():
                self.spawn(self._fetch_pending_media(number.session_id), "cloud pending media")

    async def stop(self) -> None:
        await self.processor.stop()
        await self.committer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            _awaited(coro), context=contextvars.Context()
        )
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("cloud task failed", task=what, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # -- numbers -------------------------------------------------------------------------------

    async def create_number(
        self,
        *,
        owner_id: int,
        name: str,
        phone_number_id: str,
        waba_id: str | None,
        access_token: str,
        app_secret: str,
        verify_token: str | None,
        coexistence: bool = False,
        messages_per_second: int | None = None,
        bootstrapped: bool = False,
        conn: Any = None,
    ) -> int:
        box = self.numbers.box

        async def create(c: Any) -> int:
            if await cloud_db.session_of_phone_number_id(c, phone_number_id) is not None:
                raise NumberTaken(phone_number_id)
            session = await sessions_db.create(c, owner_id=owner_id, name=name, channel="cloud")
            await cloud_db.insert_number(
                c,
                session_id=session.id,
                phone_number_id=phone_number_id,
                waba_id=waba_id,
                access_token_sealed=box.seal(access_token),
                app_secret_sealed=box.seal(app_secret),
                verify_token_sealed=box.seal(verify_token) if verify_token else None,
                coexistence=coexistence,
                messages_per_second=messages_per_second,
                bootstrapped=bootstrapped,
            )
            await sessions_db.set_state(c, session.id, "connected")
            return session.id

        if conn is not None:
            try:
                sid = await create(conn)
            except asyncpg.UniqueViolationError as exc:
                raise NumberTaken(phone_number_id) from exc
        else:
            async with self.pool.acquire() as c, c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock(8, 0)")
                sid = await create(c)
        await self.numbers.load()
        return sid

    async def bootstrap(self) -> int | None:
        """The number of `WAGATE_CLOUD_*`, created once for the admin."""
        s = self.settings
        if not (s.cloud_phone_number_id and s.cloud_access_token and s.cloud_app_secret):
            return None
        if self.numbers.by_phone_number_id(s.cloud_phone_number_id) is not None:
            return None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(8, 0)")
            if await cloud_db.session_of_phone_number_id(conn, s.cloud_phone_number_id):
                return None
            admin = await users_db.get_by_email(conn, s.admin_email)
            if admin is None:
                admins = [u for u in await users_db.list_all(conn) if u.is_admin]
                admin = admins[0] if admins else None
            if admin is None:
                log.warning("no admin to own the WAGATE_CLOUD_* number; not created")
                return None
            sid = await self.create_number(
                owner_id=admin.id,
                name="WhatsApp Cloud API",
                phone_number_id=s.cloud_phone_number_id,
                waba_id=s.cloud_waba_id,
                access_token=s.cloud_access_token.get_secret_value(),
                app_secret=s.cloud_app_secret.get_secret_value(),
                verify_token=(
                    s.cloud_verify_token.get_secret_value() if s.cloud_verify_token else None
                ),
                bootstrapped=True,
                conn=conn,
            )
        await self.numbers.load()
        log.info("cloud number created from WAGATE_CLOUD_*", session_id=sid)
        return sid

    async def set_state(self, sid: int, state: str, error: str | None = None) -> None:
        """The one place a cloud session's state changes: persisted, logged, published."""
        session = await sessions_db.set_state(self.pool, sid, state, last_error=error)
        if session is None:
            return
        log.info("cloud session state", session_id=sid, state=state, error=error)
        await self.bus.publish(
            "session-state",
            session.owner_id,
            sid,
            {
                "session_id": sid,
                "state": state,
                "error": error,
                "banned_until": None,
                "next_attempt_at": None,
                "phone": session.phone,
                "jid": session.jid,
            },
        )

    async def check_token(self, sid: int) -> tuple[bool, str]:
        """Ask the Graph API about the number with its token; the session's state follows."""
        number = self.numbers.by_session(sid)
        if number is None:
            return False, "not a Cloud API number"
        try:
            found = await self.graph.check(number.phone_number_id, number.access_token)
        except GraphError as exc:
            if exc.code == AUTH_EXPIRED:
                await self.set_state(sid, "auth_failed", str(exc))
            elif not exc.unreachable:
                await self.set_state(sid, "failed", str(exc))
            return False, str(exc)
        display = found.get("display_phone_number")
        if display:
            digits = "".join(c for c in str(display) if c.isdigit())
            await sessions_db.set_identity(
                self.pool,
                sid,
                phone=digits,
                jid=translate.jid(digits),
                push_name=found.get("verified_name"),
            )
            await cloud_db.set_display_phone_number(self.pool, sid, digits)
        was = await self.pool.fetchval("SELECT state FROM sessions WHERE id = $1", sid)
        await self.set_state(sid, "connected")
        await self.numbers.load()
        if was == "auth_failed":
            # What waited for a working token goes now, not at its next scheduled try.
            await outbox_db.due_now(self.pool, sid)
        return True, "the access token works"

    def number(self, sid: int) -> CloudNumber | None:
        return self.numbers.by_session(sid)

    def messages_per_second(self, number: CloudNumber) -> int:
        if number.messages_per_second:
            return number.messages_per_second
        if number.coexistence:
            return self.settings.cloud_coexistence_messages_per_second
        return self.settings.cloud_messages_per_second

    # -- processing the inbox ------------------------------------------------------------------

    async def _process(
        self, conn: Any, pending: list[PendingEvent]
    ) -> Callable[[], Awaitable[None]]:
        outcome = Outcome()
        done: list[int] = []
        failed: list[tuple[int, str]] = []
        try:
            async with conn.transaction():
                await self._store(conn, self._collect(pending, outcome), outcome)
            done = [p.id for p in pending]
        except POISON as exc:
            log.error("a cloud batch can not be stored; one event at a time", error=str(exc))
            outcome = Outcome()
            for event in pending:
                try:
                    async with conn.transaction():
                        await self._store(conn, self._collect([event], outcome), outcome)
                    done.append(event.id)
                except POISON as one:
                    log.error("cloud webhook event set aside", event_id=event.id, error=str(one))
                    failed.append((event.id, f"{type(one).__name__}: {one}"[:1000]))
        await cloud_db.finish(conn, done, "done")
        for event_id, error in failed:
            await cloud_db.finish(conn, [event_id], "failed", error)

        async def after_commit() -> None:
            await self._publish(outcome)

        return after_commit

    def _collect(self, pending: list[PendingEvent], outcome: Outcome) -> dict[int, Collected]:
        found: dict[int, Collected] = {}
        for event in pending:
            payload = self._parsed.pop(event.body, None)
            if payload is None:
                try:
                    payload = json.loads(event.body)
                except ValueError:
                    continue  # never stored: the webhook refuses bodies that are not JSON
            if not isinstance(payload, dict):
                continue
            for change in translate.changes_of(payload):
                number = self.numbers.by_phone_number_id(change.phone_number_id)
                if number is None and change.phone_number_id is None and change.templates:
                    # Templates belong to the account: every number of it keeps its copy.
                    owners = self.numbers.by_waba_id(change.waba_id)
                    for owner in owners:
                        into = found.setdefault(owner.session_id, Collected())
                        into.templates += change.templates
                    if owners:
                        continue
                if number is None:
                    outcome.unknown_numbers += 1
                    continue
                into = found.setdefault(number.session_id, Collected())
                into.messages += change.messages
                into.statuses += change.statuses
                into.contacts += change.contacts
                into.history += change.history
                into.history_errors += change.history_errors
                into.templates += change.templates
                into.errors += [{**e, "_field": change.kind} for e in change.errors]
        return found

    async def _store(self, conn: Any, found: dict[int, Collected], outcome: Outcome) -> None:
        for sid, got in found.items():
            changes = outcome.of(sid)
            # Meta delivers out of order: store in the order things happened.
            ordered = sorted(got.messages, key=lambda m: m.timestamp)
            await store_events(
                conn,
                sid,
                [events.MessageReceived(message=m) for m in ordered],
                changes,
                self.options,
            )
            for status in sorted(got.statuses, key=lambda s: (s.at, STATUS_ORDER.get(s.status, 9))):
                await self._store_status(conn, sid, status, changes)
            for contact in sorted(got.contacts, key=lambda c: c.at):
                await self._store_contact(conn, sid, contact)
                outcome.contacts_changed.add(sid)
            for chunk in got.history:
                history_changes = Changes()
                await store_history_chunk(conn, sid, chunk, history_changes, self.options)
                changes.conversations.update(history_changes.conversations)
                changes.updated += history_changes.updated
                outcome.history.append(
                    (sid, chunk, history_changes.history_imported, history_changes.history_skipped)
                )
            outcome.history_errors += [(sid, e) for e in got.history_errors]
            for update in got.templates:
                await cloud_db.apply_template_update(
                    conn,
                    sid,
                    template_id=update.template_id,
                    name=update.name,
                    language=update.language,
                    status=update.status,
                    reason=update.reason,
                )
            for error in got.errors:
                text, code = translate.error_text(error)
                outcome.errors.append((sid, str(error.get("_field") or "messages"), text, code))

    async def _store_status(
        self, conn: Any, sid: int, status: translate.Status, changes: Changes
    ) -> None:
        if status.status not in STATUS_ORDER:
            return
        fresh = await cloud_db.record_status(
            conn,
            sid,
            status.wa_message_id,
            status.status,
            status.at,
            status.error_code,
            status.error,
        )
        if not fresh:
            return  # a redelivery of this (message, status)
        row = await cloud_db.apply_status(
            conn, sid, status.wa_message_id, status.status, status.error_code, status.error
        )
        if row is not None:
            changes.statuses.append(row)

    async def _store_contact(self, conn: Any, sid: int, contact: translate.ContactSync) -> None:
        person = translate.jid(contact.phone)
        if contact.action == "remove":
            await cloud_db.remove_contact(conn, sid, person)
            return
        await contacts_db.upsert(
            conn, session_id=sid, jid=person, phone=contact.phone, saved_name=contact.full_name
        )
        if contact.full_name:
            await conn.execute(
                "UPDATE contacts SET saved_name = $3, updated_at = now() "
                "WHERE session_id = $1 AND jid = $2 AND saved_name IS DISTINCT FROM $3",
                sid,
                person,
                contact.full_name,
            )

    async def apply_known_statuses(
        self, conn: Any, sid: int, wa_message_id: str
    ) -> list[dict[str, Any]]:
        """Statuses that arrived before we knew our message's wamid (the webhook can beat the
        send's answer): applied now, in order."""
        known = await cloud_db.known_statuses(conn, sid, wa_message_id)
        changed = []
        for row in sorted(known, key=lambda r: STATUS_ORDER.get(r["status"], 9)):
            applied = await cloud_db.apply_status(
                conn, sid, wa_message_id, row["status"], row["error_code"], row["error"]
            )
            if applied is not None:
                changed.append(applied)
        return changed

    # -- after the commit ----------------------------------------------------------------------

    async def _publish(self, outcome: Outcome) -> None:
        if outcome.unknown_numbers:
            self.webhooks.labels("unknown_number").inc(outcome.unknown_numbers)
        for sid, changes in outcome.changes.items():
            number = self.numbers.by_session(sid)
            if number is None:
                continue
            for request in changes.media:
                media_id = request.media.download.get("media_id") or ""
                self.spawn(
                    self._download(sid, request.message_id, media_id), "cloud media download"
                )
            if self.metrics is not None:
                for message in changes.new_messages:
                    if not message.get("from_history"):
                        direction = "in" if message.get("direction") == "inbound" else "out"
                        self.metrics.messages.labels(
                            CHANNEL_CLOUD, direction, message.get("message_type", "")
                        ).inc()
            items: list[tuple[str, dict[str, Any]]] = []
            base = {"session_id": sid}
            items += [("message-new", {**base, **m}) for m in changes.new_messages]
            items += [("message-status", {**base, **s}) for s in changes.statuses]
            items += [("message-updated", {**base, **u}) for u in changes.updated]
            items += [
                ("conversation-merged", {**base, "conversation_id": kept, "merged_from": gone})
                for gone, kept in changes.merged
            ]
            items += [
                ("conversation-updated", {**base, "conversation_id": cid})
                for cid in sorted(changes.conversations)
            ]
            if sid in outcome.contacts_changed:
                items.append(("contacts-updated", base))
            if items:
                await self.bus.publish_many(number.owner_id, sid, items)
        for sid, chunk, imported, skipped in outcome.history:
            number = self.numbers.by_session(sid)
            if number is None:
                continue
            await self.bus.publish(
                "history-progress",
                number.owner_id,
                sid,
                {
                    "session_id": sid,
                    "progress": chunk.progress,
                    "chunk_order": chunk.chunk_order,
                    "sync_type": chunk.sync_type,
                    "messages": sum(len(c.messages) for c in chunk.conversations),
                    "imported": imported,
                    "already_stored": skipped,
                },
            )
        for sid, kind, text, code in outcome.errors:
            await self._show_error(sid, f"Meta reported an error ({kind}): {text}", code)
        for sid, error in outcome.history_errors:
            number = self.numbers.by_session(sid)
            if number is None:
                continue
            declined = error.code == DECLINED_HISTORY
            text = (
                "the Business app user declined sharing their chat history"
                if declined
                else "history sync failed"
            ) + f" ({error.code}: {error.message})"
            session = await sessions_db.get(self.pool, sid)
            if session is not None:
                await sessions_db.set_state(self.pool, sid, session.state, last_error=text)
            await self.bus.publish(
                "history-progress",
                number.owner_id,
                sid,
                {"session_id": sid, "error": text, "error_code": error.code, "declined": declined},
            )

    async def _show_error(self, sid: int, text: str, code: int | None) -> None:
        """An error Meta sent out of band: the session's `last_error` (its state unchanged) and
        an `error` event for its owner."""
        number = self.numbers.by_session(sid)
        session = await sessions_db.get(self.pool, sid)
        if number is None or session is None:
            return
        log.warning("cloud webhook error", session_id=sid, error=text, error_code=code)
        await sessions_db.set_state(self.pool, sid, session.state, last_error=text)
        await self.bus.publish(
            "error",
            number.owner_id,
            sid,
            {"session_id": sid, "action": "cloud_webhook", "error": text, "error_code": code},
        )

    # -- media ---------------------------------------------------------------------------------

    async def _download(self, sid: int, message_id: int, media_id: str) -> None:
        number = self.numbers.by_session(sid)
        if number is None or not media_id:
            return
        backoff = Backoff(base=0.5, cap=10.0)
        status, sha, mime, size, error = "failed", None, None, None, ""
        for attempt in range(1, MEDIA_ATTEMPTS + 1):
            try:
                # The URL lives five minutes: asked for right before the download, every time.
                info = await self.graph.media_url(media_id, number.access_token)
                if self.media.too_large(info.file_size):
                    status, size, mime = "too_large", info.file_size, info.mime_type
                    break
                data = await self.graph.download(info.url, number.access_token)
                stored = await asyncio.to_thread(self.media.put, data, info.mime_type)
                status, sha, mime, size = stored.status, stored.sha256, stored.mime, stored.size
                break
            except GraphError as exc:
                error = str(exc)
                log.warning(
                    "cloud media download failed",
                    session_id=sid,
                    message_id=message_id,
                    attempt=attempt,
                    error=error,
                )
                if exc.code == AUTH_EXPIRED:
                    await self.set_state(sid, "auth_failed", error)
                    break
                if attempt < MEDIA_ATTEMPTS:
                    await asyncio.sleep(backoff.next_delay())
        changed = await messages_db.set_media(
            self.pool, message_id, status, sha256=sha, mime=mime, size=size
        )
        if changed is not None:
            await self.bus.publish(
                "message-updated",
                number.owner_id,
                sid,
                {
                    "session_id": sid,
                    **changed,
                    "change": "media",
                    "media_status": status,
                    "error": error or None,
                },
            )

    async def _fetch_pending_media(self, sid: int) -> None:
        for row in await messages_db.pending_media(self.pool, sid):
            raw = row["raw"]
            raw = json.loads(raw) if isinstance(raw, str) else (raw or {})
            item = raw.get("message") or {}
            body = item.get(str(item.get("type"))) if isinstance(item, dict) else None
            if isinstance(body, dict) and body.get("id"):
                self.spawn(self._download(sid, row["id"], str(body["id"])), "cloud media")
