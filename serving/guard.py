"""ASGI middleware that turns away oversized or mistyped requests with a JSON error, and
unwraps form uploads.

In: every HTTP request to the service. Out: the request passed on unchanged, or
- 413 `{"error": ...}` for a body over `max_bytes` (or the route's own limit in
  `route_limits`), declared in Content-Length or counted as it streams in (BentoML reads
  whole bodies into memory before validating, so the limit has to act first);
- 415 for a request to an API route whose Content-Type is not one it takes (BentoML would
  otherwise parse it as a form, or refuse pickle with a differently shaped body);
- 400 for a Content-Length that is not a number;
- on a route in `form_uploads`, a `multipart/form-data` body of exactly one file part
  passed on as that file alone, as if it had been sent as the raw body (Content-Type the
  part's own, or application/octet-stream), so the API sees one kind of request; 400 for
  a form without a file part, with two, with a text field, or that cannot be read, and
  415 for a part whose Content-Type the route does not take.
Each refusal is counted in /metrics by its reason (serving/metrics.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics

FORM = "multipart/form-data"


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        content_types: Mapping[str, Sequence[str]],
        form_uploads: Collection[str] = (),
        route_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = dict(route_limits or {})  # route -> a lower body limit
        self.content_types = content_types  # route -> accepted media types ("image/*" ok)
        self.form_uploads = frozenset(form_uploads)  # routes whose forms are unwrapped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":  # the APIs are all POST
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        accepted = self.content_types.get(scope["path"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type = content_type.split(";")[0].strip().lower()
        if accepted is not None and media_type and not _accepts(accepted, media_type):
            await drain(receive)
            await reply(send, 415, _not_accepted(media_type, accepted), "content_type")
            return
        limit = self.route_limits.get(scope["path"], self.max_bytes)
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await reply(
                    send,
                    400,
                    f"Content-Length {declared.decode('latin-1')!r} is not a number",
                    "content_length",
                )
                return
            if int(declared) > limit:
                await drain(receive)  # so a client that is still sending gets to read the reply
                await reply(send, 413, _too_large(int(declared), limit), "body_too_large")
                return
        if media_type == FORM and scope["path"] in self.form_uploads:
            await self._form_upload(scope, receive, send, content_type, accepted or (), limit)
            return
        if declared is not None:
            await self.app(scope, receive, send)  # the HTTP server enforces the declared length
            return
        body = await self._read(receive, send, limit)
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, send: Send, limit: int) -> bytes | None:
        """The whole body, up to the limit; None if it was over (413 sent) or the client
        went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                size += await drain(receive) if more else 0
                await reply(send, 413, _too_large(size, limit), "body_too_large")
                return None
            if not more:
                return b"".join(chunks)

    async def _form_upload(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        content_type: str,
        accepted: Sequence[str],
        limit: int,
    ) -> None:
        """Pass on the one file of a form as the raw body, or answer why not."""
        body = await self._read(receive, send, limit)
        if body is None:
            return
        try:
            part = form_file(body, content_type)
        except FormError as error:
            await reply(send, error.status, str(error), "form")
            return
        raw_types = [pattern for pattern in accepted if pattern != FORM]
        if part.media_type and not _accepts(raw_types, part.media_type):
            await reply(
                send,
                415,
                "the form's file part: " + _not_accepted(part.media_type, raw_types),
                "content_type",
            )
            return
        kept = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        kept += [
            (b"content-type", (part.media_type or "application/octet-stream").encode("latin-1")),
            (b"content-length", str(len(part.data)).encode()),
        ]
        await self.app({**scope, "headers": kept}, _replay(part.data, receive), send)


def _too_large(size: int, limit: int) -> str:
    return f"request body is {size} bytes; the limit is {limit} bytes"


class FormError(ValueError):
    """A multipart/form-data body that is not one file; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FormPart:
    field: str = ""
    filename: str | None = None  # None: a text field, not a file
    media_type: str = ""  # the part's own Content-Type, lower case, "" if it has none
    data: bytes = b""


def form_parts(body: bytes, content_type: str) -> list[FormPart]:
    """The parts of a multipart/form-data body, in order, read in memory (the body is
    already within the size limit). FormError if it is not a whole, well-formed form."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError(f"Content-Type {FORM} needs a boundary parameter")
    parts: list[FormPart] = []
    chunks: list[bytes] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    ended = False

    def header_end() -> None:
        name = bytes(header["field"]).decode("latin-1").lower()
        value, options = parse_options_header(bytes(header["value"]))
        if name == "content-disposition":
            parts[-1].field = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            parts[-1].filename = None if filename is None else filename.decode("utf-8", "replace")
        elif name == "content-type":
            parts[-1].media_type = value.decode("latin-1").lower()
        header["field"].clear()
        header["value"].clear()

    def part_end() -> None:
        parts[-1].data = b"".join(chunks)
        chunks.clear()

    def end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: parts.append(FormPart()),
            "on_header_field": lambda data, start, stop: header["field"].extend(data[start:stop]),
            "on_header_value": lambda data, start, stop: header["value"].extend(data[start:stop]),
            "on_header_end": header_end,
            "on_part_data": lambda data, start, stop: chunks.append(bytes(data[start:stop])),
            "on_part_end": part_end,
            "on_end": end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise FormError(f"the {FORM} body cannot be read: {error}") from None
    if not ended:
        raise FormError(f"the {FORM} body ends before its closing boundary")
    return parts


def form_file(body: bytes, content_type: str) -> FormPart:
    """The one file part of a form (whatever its field name); FormError otherwise."""
    parts = form_parts(body, content_type)
    files = [part for part in parts if part.filename is not None]
    fields = [part.field for part in parts if part.filename is None]
    how = "send the image as the form's only part, a file: curl -F image=@digit.png"
    if fields:
        raise FormError(f"the form has a text field ({', '.join(map(repr, fields))}); {how}")
    if not files:
        raise FormError(f"the form has no file part; {how}")
    if len(files) > 1:
        names = ", ".join(repr(part.field) for part in files)
        raise FormError(f"the form has {len(files)} file parts ({names}); send exactly one image")
    if not files[0].data:  # what a browser sends for a form whose file was not chosen
        raise FormError(f"the form's file part ({files[0].field!r}) is empty; choose an image")
    return files[0]


def _accepts(accepted: Sequence[str], media_type: str) -> bool:
    return any(_matches(media_type, pattern) for pattern in accepted)


def _matches(media_type: str, pattern: str) -> bool:
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return media_type == pattern


def _not_accepted(media_type: str, accepted: Sequence[str]) -> str:
    return f"Content-Type {media_type} is not accepted here; send {' or '.join(accepted)}"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` in one message, then whatever the client sends."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def drain(receive: Receive) -> int:
    """Read and drop the rest of the body; return how many bytes that was."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return size


async def reply(send: Send, status: int, error: str, reason: str) -> None:
    """Refuse the request with `status` and a JSON body; count it under `reason`."""
    metrics.rejected(reason)
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
