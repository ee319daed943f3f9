"""The browser UI: `web/` served as static files on the gateway's own port.

`/` is the single page (`web/index.html`), `/app/...` its modules and styles (`web/app/`), and
`/vendor/socket.io/...` the Socket.IO client that `npm install` put under `web/node_modules`
(never copied into the repository, never from a CDN). Routing inside the page uses the URL
fragment, so no other path needs to fall back to the page.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SOCKETIO_DIST = WEB_DIR / "node_modules" / "socket.io-client" / "dist"

# The page and its modules change with every deploy and are small: always revalidate.
_REVALIDATE = {"Cache-Control": "no-cache"}


def add_web_routes(app: web.Application, root: Path = WEB_DIR) -> None:
    """Serve the UI from `root` (default: the repository's `web/`), when it is there."""
    index = root / "index.html"
    if not index.is_file():
        log.warning("web UI not found; only the API is served", path=str(root))
        return

    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers=_REVALIDATE)

    app.router.add_get("/", page, name="web-index")
    app.router.add_static("/app/", root / "app", name="web-app", append_version=False)
    dist = root / "node_modules" / "socket.io-client" / "dist"
    if dist.is_dir():
        app.router.add_static("/vendor/socket.io/", dist, name="web-socketio")
    else:
        log.warning("socket.io-client missing: run `make install` (npm) for live updates")
    app.on_response_prepare.append(_no_cache_for_ui)


async def _no_cache_for_ui(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/app/") and "Cache-Control" not in response.headers:
        response.headers.update(_REVALIDATE)
