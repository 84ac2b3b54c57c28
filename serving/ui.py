"""The draw-a-digit page, an ASGI app that serving/service.py mounts at /ui.

In: GET/HEAD /ui/ and /ui/<asset>. Out: the files in serving/static/ (index.html for the
folder), each with headers that hold the page to its own origin: a Content-Security-Policy
of 'self' (no CDN, no external fonts, no inline script), no MIME sniffing, and revalidation
on every load so a redeployed page is never stale. The page calls the service's own
/predict_image and /model_info; it needs nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"  # packed into the Bento by bentofile.yaml

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate with the ETag: cheap, and never stale
}


class PageFiles(StaticFiles):
    """StaticFiles that adds HEADERS to every file it serves."""

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
