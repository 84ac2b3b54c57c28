"""Every request named and every error told in one line, and connections that make way.

In: each HTTP request to the service (RequestLog is the outermost of its middlewares).
Out: the same response with an ``X-Request-ID`` header (the client's own, if it sent a
plain one, else a new one); one log line, with that id, for each answer of 400 or more
(never a traceback for a 4xx: ``QuietClientErrors`` drops the one BentoML would log for
a request the API rejected), at most ERROR_LINES_PER_S a second, the rest counted in the
next line, so that a client sending nonsense cannot fill the disk; and
``Connection: close`` on a connection's ``max_requests``-th answer, so that clients
reconnect now and then and spread over the workers again, as after one of them was
restarted. The access log of every request is
BentoML's, off unless MNIST_ACCESS_LOG=1 (serving/service.py). Each API request's
latency, and a 4xx that no inner layer counted, go to /metrics (serving/metrics.py).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import OrderedDict
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.bentoml_adapter import SERVER_LOGGER

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
log = logging.getLogger("bentoml.mnist")  # under bentoml: its handlers format it
PLAIN_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
ERROR_CHARS = 300  # of an error's body, in its log line
CONNECTIONS_KEPT = 4096  # request counts of the most recent connections
ERROR_LINES_PER_S = 20  # per worker


class ErrorLines:
    """A log line per error, at most ``per_second`` a second; the lines held back are
    counted and said in the next one."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.second, self.told, self.held = 0, 0, 0

    def tell(self, line: str) -> None:
        now = int(time.monotonic())
        if now != self.second:
            self.second, self.told = now, 0
        if self.told >= self.per_second:
            self.held += 1
            return
        self.told += 1
        if self.held:
            line += f" ({self.held} more error answers not logged before this one)"
            self.held = 0
        log.warning(line)


class RequestLog:
    def __init__(self, app: ASGIApp, *, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests  # per connection; 0 = never close
        self.served: OrderedDict[tuple, int] = OrderedDict()  # connection -> requests
        self.errors = ErrorLines(ERROR_LINES_PER_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if PLAIN_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(request_id)
        timer = metrics.RequestTimer(scope["path"])
        close = self._count(scope.get("client"))
        answer: dict = {"status": 0, "body": b""}

        async def tell(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if close:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and answer["status"] >= 400:
                answer["body"] += message.get("body", b"")[: ERROR_CHARS - len(answer["body"])]
            await send(message)

        try:
            await self.app(scope, receive, tell)
        finally:
            timer.done(answer["status"])
            if answer["status"] >= 400:
                what = answer["body"].decode("utf-8", "replace").replace("\n", " ")
                self.errors.tell(
                    f"request {request_id}: {scope.get('method')} {scope.get('path')}"
                    f" -> {answer['status']} {what}"
                )
            REQUEST_ID.reset(token)

    def _count(self, client) -> bool:
        """Count a request on its connection; True when the connection should close."""
        if not self.max_requests or client is None:
            return False
        key = tuple(client)
        served = self.served.pop(key, 0) + 1
        if served >= self.max_requests:
            return True  # forgotten: the client opens a new connection
        self.served[key] = served
        if len(self.served) > CONNECTIONS_KEPT:
            self.served.popitem(last=False)
        return False


class QuietClientErrors(logging.Filter):
    """On BentoML's server logger: drop the traceback it logs for a request the API
    rejected with a ValidationError (a 400, already told in one line by RequestLog), and
    name the request in what it logs for the others (5xx)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            return False
        if record.exc_info:
            record.msg = f"request {REQUEST_ID.get()}: {record.msg}"
        return True


def install_filters() -> None:
    logging.getLogger(SERVER_LOGGER).addFilter(QuietClientErrors())
