"""The worker's durable spool: every WhatsApp event is written here before anything else.

neonize hands each event to Python on its callback thread, one at a time, after whatsmeow has
already acknowledged it to WhatsApp (NEONIZE.md). The worker appends the raw event bytes here,
synchronously on that thread, before scheduling any handler, and the handler fsyncs before it
acts on the event (one fsync covers a burst of events); the supervisor acknowledges a
sequence number only after the database transaction that stored it commits; on start, a worker
replays what was spooled and never acknowledged. So an event that reached Python is never lost,
whatever dies afterwards (worker, gateway, database), and the idempotent store makes a replay
harmless.

Layout: `<dir>/seg-<first seq>.log` segments of records `seq u64 | code u32 | len u32 | crc32 u32
| payload`, and `<dir>/acked` holding the highest acknowledged seq. Fully acknowledged segments
are deleted; a torn record at the end of the last segment (a crash mid-write) is cut off.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

_RECORD = struct.Struct(">QIII")
SEGMENT_BYTES = 8 * 1024 * 1024

SyncMode = Literal["fsync", "flush"]


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    code: int
    payload: bytes


class Spool:
    """Append-only, crash-safe event log of one session. Thread-safe."""

    def __init__(self, directory: Path, *, sync: SyncMode = "fsync") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sync_mode = sync
        self._dirty = False
        self._lock = threading.Lock()
        self._acked = self._read_acked()
        self._segments = sorted(self._segment_paths(), key=lambda p: self._first_seq(p))
        self._last_seq = self._acked
        for path in self._segments:
            for event in self._scan(path, repair=path == self._segments[-1]):
                self._last_seq = max(self._last_seq, event.seq)
        self._file: BinaryIO | None = None
        self._file_size = 0

    # -- paths --------------------------------------------------------------------------------

    def _segment_paths(self) -> list[Path]:
        return [p for p in self.dir.glob("seg-*.log") if p.is_file()]

    @staticmethod
    def _first_seq(path: Path) -> int:
        return int(path.stem.removeprefix("seg-"))

    def _read_acked(self) -> int:
        try:
            return int((self.dir / "acked").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    # -- reading ------------------------------------------------------------------------------

    def _scan(self, path: Path, *, repair: bool = False) -> Iterator[SpooledEvent]:
        good_until = 0
        with path.open("rb") as handle:
            data = handle.read()
        offset = 0
        while offset + _RECORD.size <= len(data):
            seq, code, length, crc = _RECORD.unpack_from(data, offset)
            start = offset + _RECORD.size
            payload = data[start : start + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            offset = start + length
            good_until = offset
            yield SpooledEvent(seq, code, payload)
        if repair and good_until < len(data):
            with path.open("r+b") as handle:
                handle.truncate(good_until)

    def unacked(self) -> list[SpooledEvent]:
        """Events spooled and never acknowledged, in order (what a new worker replays)."""
        with self._lock:
            return [
                event
                for path in self._segments
                for event in self._scan(path)
                if event.seq > self._acked
            ]

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def acked(self) -> int:
        return self._acked

    # -- writing ------------------------------------------------------------------------------

    def _open_segment(self, first_seq: int) -> BinaryIO:
        path = self.dir / f"seg-{first_seq:020d}.log"
        handle = path.open("ab")
        self._segments.append(path)
        self._file_size = handle.tell()
        return handle

    def append(self, code: int, payload: bytes) -> int:
        """Record one event and return its sequence number.

        On return the record is in the kernel (it survives this process being killed);
        `sync()` makes it survive a power loss too. Callers sync before they act on an event,
        which lets one fsync cover a burst of events.
        """
        record_crc = zlib.crc32(payload)
        with self._lock:
            seq = self._last_seq + 1
            if self._file is None or self._file_size >= SEGMENT_BYTES:
                if self._file is not None:
                    self._sync_locked()
                    self._file.close()
                self._file = self._open_segment(seq)
            self._file.write(_RECORD.pack(seq, code, len(payload), record_crc) + payload)
            self._file.flush()
            self._dirty = True
            self._file_size += _RECORD.size + len(payload)
            self._last_seq = seq
            return seq

    def sync(self) -> None:
        """fsync everything appended so far (a no-op when nothing is pending, or in flush
        mode)."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._dirty and self._file is not None and self.sync_mode == "fsync":
            os.fdatasync(self._file.fileno())
        self._dirty = False

    def ack(self, seq: int) -> None:
        """Everything up to `seq` is stored upstream; drop what is no longer needed."""
        with self._lock:
            if seq <= self._acked:
                return
            self._acked = min(seq, self._last_seq)
            tmp = self.dir / "acked.tmp"
            tmp.write_text(str(self._acked))
            os.replace(tmp, self.dir / "acked")
            self._drop_acked_segments()

    def _drop_acked_segments(self) -> None:
        # A segment can go once the next one starts at or below acked + 1.
        while len(self._segments) > 1 and self._first_seq(self._segments[1]) <= self._acked + 1:
            self._segments.pop(0).unlink(missing_ok=True)
        if self._segments and self._acked >= self._last_seq:
            # Everything is acknowledged: start afresh so the directory stays small.
            if self._file is not None:
                self._file.close()
                self._file = None
            for path in self._segments:
                path.unlink(missing_ok=True)
            self._segments = []

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._sync_locked()
            if self._file is not None:
                self._file.close()
                self._file = None
