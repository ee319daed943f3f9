"""Attachments on disk: stored once by content hash, type sniffed from the bytes.

Written by workers (which download), read by the gateway (which serves). Layout:
`<media dir>/<sha256[:2]>/<sha256>`; a file is written to a temporary name and renamed, so a
reader never sees half of one and two downloads of the same bytes end as one file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import filetype


@dataclass(frozen=True)
class StoredMedia:
    status: str  # stored | too_large
    sha256: str | None
    size: int | None
    mime: str | None


def media_path(root: Path, sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256 hex digest")
    return root / sha256[:2] / sha256


def sniff(data: bytes, declared: str | None) -> str:
    """The type the bytes say they are; the declared one when they say nothing."""
    kind = filetype.guess(data[:8192])
    if kind is not None:
        return str(kind.mime)
    return declared or "application/octet-stream"


class MediaStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def too_large(self, declared_size: int | None) -> bool:
        return declared_size is not None and declared_size > self.max_bytes

    def put(self, data: bytes, declared_mime: str | None) -> StoredMedia:
        if len(data) > self.max_bytes:
            return StoredMedia("too_large", None, len(data), declared_mime)
        digest = hashlib.sha256(data).hexdigest()
        path = media_path(self.root, digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredMedia("stored", digest, len(data), sniff(data, declared_mime))
