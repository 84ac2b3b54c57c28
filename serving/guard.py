"""ASGI middleware that turns away oversized or mistyped requests with a JSON error.

In: every HTTP request to the service. Out: the request passed on unchanged, or
- 413 `{"error": ...}` for a body over `max_bytes`, declared in Content-Length or
  counted as it streams in (BentoML reads whole bodies into memory before validating,
  so the limit has to act first);
- 415 for a request to an API route whose Content-Type is not one it takes (BentoML would
  otherwise parse it as a form, or refuse pickle with a differently shaped body);
- 400 for a Content-Length that is not a number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestGuard:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, content_types: Mapping[str, Sequence[str]]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.content_types = content_types  # route -> accepted media types ("image/*" ok)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":  # the APIs are all POST
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        accepted = self.content_types.get(scope["path"])
        if accepted is not None:
            media_type = (
                headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            )
            if media_type and not any(_matches(media_type, pattern) for pattern in accepted):
                await _drain(receive)
                await _reply(
                    send,
                    415,
                    f"Content-Type {media_type} is not accepted here; send {' or '.join(accepted)}",
                )
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(
                    send, 400, f"Content-Length {declared.decode('latin-1')!r} is not a number"
                )
                return
            if int(declared) > self.max_bytes:
                await _drain(receive)  # so a client that is still sending gets to read the reply
                await _reply(send, 413, self._too_large(int(declared)))
                return
            await self.app(scope, receive, send)  # the HTTP server enforces the declared length
            return
        await self._buffered(scope, receive, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No Content-Length (a chunked upload): read up to the limit, then replay."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                size += await _drain(receive) if more else 0
                await _reply(send, 413, self._too_large(size))
                return
            if not more:
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return f"request body is {size} bytes; the limit is {self.max_bytes} bytes"


def _matches(media_type: str, pattern: str) -> bool:
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return media_type == pattern


async def _drain(receive: Receive) -> int:
    """Read and drop the rest of the body; return how many bytes that was."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return size


async def _reply(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
