"""The service's two pages: the draw-a-digit page, an ASGI app that serving/service.py
mounts at /ui, and the API page at /, an ASGI middleware it adds.

In: GET/HEAD /ui/ and /ui/<asset>. Out: the files in serving/static/ (index.html for the
folder), each with headers that hold the page to its own origin: a Content-Security-Policy
of 'self' (no CDN, no external fonts, no inline script), no MIME sniffing, and revalidation
on every load so a redeployed page is never stale. The page calls the service's own
/predict_image and /model_info; it needs nothing else.

In: GET/HEAD /. Out: serving/static/api.html, Swagger UI on the service's OpenAPI spec with
a link to /ui/, in place of BentoML's page (which loads Google Tag Manager and links
GitHub). It loads Swagger UI from the copy BentoML serves at /static_content/, its own
script and style from /ui/, the spec from /docs.json: all from the service, as its
Content-Security-Policy insists. Any other request passes on untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"  # packed into the Bento by bentofile.yaml
API_PAGE = STATIC / "api.html"  # served at / only: its relative links assume it is there

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate with the ETag: cheap, and never stale
}


# Swagger UI styles its rendering with inline style attributes, and shows icons as data: URLs.
API_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


class PageFiles(StaticFiles):
    """StaticFiles that adds HEADERS to every file it serves, except the API page."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path == API_PAGE.name:  # not at /ui/api.html, where its links would lead nowhere
            return "", None
        return super().lookup_path(path)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        return response


app = PageFiles(directory=STATIC, html=True)  # /ui/ serves index.html; /ui redirects there


class ApiPage:
    """ASGI middleware: GET or HEAD / gets API_PAGE with API_HEADERS; the rest passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in {"GET", "HEAD"}:
            page = FileResponse(API_PAGE, headers=API_HEADERS, media_type="text/html")
            await page(scope, receive, send)
            return
        await self.app(scope, receive, send)
