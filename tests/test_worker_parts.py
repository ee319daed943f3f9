"""The parts a worker is made of: the durable spool, IPC frames, the backoff helper."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sessions import events, ipc
from sessions.backoff import Backoff
from sessions.spool import Spool

# -- spool ----------------------------------------------------------------------------------


def test_spool_numbers_events_and_replays_only_unacknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, sync="fsync")
    seqs = [spool.append(17, f"event {i}".encode()) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    spool.ack(3)
    spool.close()

    with Spool(tmp_path) as reopened:
        assert [(e.seq, e.payload) for e in reopened.unacked()] == [
            (4, b"event 3"),
            (5, b"event 4"),
        ]
        assert reopened.append(18, b"next") == 6  # numbering survives a restart


def test_spool_cuts_a_torn_record_left_by_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(17, b"complete")
    spool.append(17, b"torn apart")
    spool.close()
    segment = next(tmp_path.glob("seg-*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-4])  # the process died mid-write

    with Spool(tmp_path) as reopened:
        assert [e.payload for e in reopened.unacked()] == [b"complete"]
        assert reopened.append(17, b"after") == 2
    with Spool(tmp_path) as again:
        assert [e.payload for e in again.unacked()] == [b"complete", b"after"]


def test_spool_forgets_acknowledged_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sessions.spool.SEGMENT_BYTES", 64)
    with Spool(tmp_path, sync="flush") as spool:
        for i in range(20):
            spool.append(17, b"x" * 40 + bytes([i]))
        assert len(list(tmp_path.glob("seg-*.log"))) > 5
        spool.ack(10)
        assert all(e.seq > 10 for e in spool.unacked())
        assert len(spool.unacked()) == 10
        spool.ack(20)
        assert list(tmp_path.glob("seg-*.log")) == []
        assert spool.append(17, b"again") == 21


def test_spool_ack_beyond_what_was_written_is_clamped(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(17, b"one")
        spool.ack(99)
        assert spool.acked == 1
        assert spool.append(17, b"two") == 2
    with Spool(tmp_path) as again:
        assert [e.seq for e in again.unacked()] == [2]


# -- IPC --------------------------------------------------------------------------------------


async def _pipe(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_frames_round_trip_our_typed_messages() -> None:
    frame = ipc.EventFrame(
        session_id=3,
        seq=7,
        events=[
            events.QRCode(code="2@abc", expires_at=datetime(2026, 1, 1, tzinfo=UTC)),
            events.LoggedOut(reason="LOGGED_OUT"),
        ],
    )
    reader = await _pipe(ipc.encode(frame) + ipc.encode(ipc.Pong(nonce=4)))
    assert await ipc.read_to_supervisor(reader) == frame
    assert await ipc.read_to_supervisor(reader) == ipc.Pong(nonce=4)
    assert await ipc.read_to_supervisor(reader) is None  # clean end of stream

    command = ipc.Request(request_id=1, session_id=3, command=ipc.SendText(to="x@s", text="hi"))
    reader = await _pipe(ipc.encode(command))
    assert await ipc.read_to_worker(reader) == command


async def test_truncated_and_foreign_frames_are_protocol_errors() -> None:
    good = ipc.encode(ipc.Pong(nonce=1))
    with pytest.raises(ipc.ProtocolError):
        await ipc.read_to_supervisor(await _pipe(good[:-2]))
    with pytest.raises(ipc.ProtocolError):
        await ipc.read_to_supervisor(await _pipe(b"\x00\x00\x00\x02{}"))
    with pytest.raises(ipc.ProtocolError):
        await ipc.read_to_supervisor(await _pipe(b"\xff\xff\xff\xff"))
    # A worker message is not a supervisor message.
    with pytest.raises(ipc.ProtocolError):
        await ipc.read_to_worker(await _pipe(good))


def test_hello_carries_the_protocol_version() -> None:
    hello = ipc.Hello(version=ipc.PROTOCOL_VERSION, pid=1, driver="fake")
    assert b'"version":2' in ipc.encode(hello)


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters() -> None:
    rolls = iter([0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    backoff = Backoff(base=1, cap=8, jitter=0.25, rand=lambda: next(rolls))
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == [0.75, 2.5, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_backoff_resets_after_a_stable_period() -> None:
    now = [0.0]
    backoff = Backoff(base=1, cap=60, jitter=0, reset_after=30, clock=lambda: now[0])
    assert [backoff.next_delay() for _ in range(3)] == [1, 2, 4]
    backoff.up()
    now[0] = 10.0  # a short run does not forgive
    assert backoff.next_delay() == 8
    backoff.up()
    now[0] = 100.0  # a long one does
    assert backoff.next_delay() == 1


def test_every_command_model_can_cross_the_ipc() -> None:
    commands = [
        cls
        for cls in vars(ipc).values()
        if isinstance(cls, type)
        and issubclass(cls, ipc._Msg)
        and isinstance(cls.model_fields.get("command") and cls.model_fields["command"].default, str)
    ]
    assert len(commands) >= 10
    for cls in commands:
        fields = {
            name: "x" if field.annotation is str else 1
            for name, field in cls.model_fields.items()
            if field.is_required()
        }
        if cls is ipc.MarkRead:
            fields["message_ids"] = ["a"]
        if cls is ipc.DownloadMedia:
            fields["message"] = {}
        if cls is ipc.SendMedia:
            fields["kind"] = "image"
        request = ipc.Request(request_id=1, session_id=1, command=cls(**fields))
        assert ipc.Request.model_validate_json(request.model_dump_json()) == request
