"""Opaque keyset cursors: the position of the last item of a page, base64url of `time|id`."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from gateway.errors import ApiError

_NONE = "-"
# Where conversations without any message sort (the list query uses the same value).
NO_TIME = datetime(1, 1, 1, tzinfo=UTC)


def encode_cursor(at: datetime | None, item_id: int) -> str:
    raw = f"{at.isoformat() if at else _NONE}|{item_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, item_id = raw.partition("|")
        when = datetime.fromisoformat(at) if at != _NONE else NO_TIME
        if when.tzinfo is None:
            raise ValueError("cursor time without a zone")
        when = when.astimezone(UTC)
        number = int(item_id)
        if not 0 < number < 2**63:
            raise ValueError("cursor id out of range")
        return when, number
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid cursor", code="validation_error") from exc
