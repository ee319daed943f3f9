"""`GET /api/v1/media/{message_id}`: a message's attachment, to its owner only, with ranges."""

from __future__ import annotations

from aiohttp import web

from db import messages
from gateway.auth import current_user
from gateway.errors import ApiError, NotFound
from gateway.keys import POOL, SETTINGS
from gateway.routing import ApiRouter, path_int
from sessions.media import media_path

router = ApiRouter("media")

INLINE_TYPES = ("image/", "video/", "audio/")


@router.get(
    "/api/v1/media/{message_id}",
    summary="The attachment of a message (supports Range requests)",
    description="Answers the bytes with their sniffed Content-Type. 409 while the download is "
    "pending, when it failed or when it was too large to keep.",
    errors=(404, 409),
)
async def get_media(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    found = await messages.media_of(request.app[POOL], path_int(request, "message_id"))
    if found is None or (found["owner_id"] != user.id and not user.is_admin):
        raise NotFound("message")
    status = found["media_status"]
    if status is None:
        raise NotFound("media of this message")
    if status != "stored" or not found["media_sha256"]:
        raise ApiError(409, f"the media of this message is {status}", code=f"media_{status}")
    path = media_path(request.app[SETTINGS].media_path, found["media_sha256"])
    if not path.is_file():
        raise ApiError(409, "the media file is missing from the media directory", code="media_lost")
    mime = found["media_mime"] or "application/octet-stream"
    response = web.FileResponse(path, headers={"Content-Type": mime})
    filename = found["media_filename"]
    disposition = "inline" if mime.startswith(INLINE_TYPES) else "attachment"
    if filename:
        safe = filename.replace('"', "").replace("\\", "")
        response.headers["Content-Disposition"] = f'{disposition}; filename="{safe}"'
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return response
