"""QR payloads -> `data:image/png;base64,...` URLs, rendered once per code (codes rotate every
20-60 s; a page polling every second must not re-render each time)."""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import qrcode
import qrcode.image.pure


@lru_cache(maxsize=256)
def qr_data_url(code: str) -> str:
    image = qrcode.make(
        code,
        image_factory=qrcode.image.pure.PyPNGImage,
        error_correction=qrcode.constants.ERROR_CORRECT_L,
        box_size=8,
        border=2,
    )
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
