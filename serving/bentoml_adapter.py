"""Where this service reaches past BentoML's public API: every such name, in one place.

BentoML 1.4 has no public way to do three things the service needs, so it uses these, and
tests/serving/test_bentoml_adapter.py fails by name on an upgrade that moves or changes one:

- ``APIMethod`` (``_bentoml_sdk.method``): the class ``@bentoml.api`` returns. The image
  API subclasses it to document two request bodies in OpenAPI (the file as the body, and
  a form of one file part): ``@bentoml.api`` can describe only the first.
- ``MediaType`` and ``Schema`` (``bentoml._internal.service.openapi.specification``): the
  OpenAPI objects ``APIMethod.openapi_request`` is made of.
- ``SERVER_LOGGER``: the name of the logger BentoML's HTTP app logs a failed request's
  traceback with; serving/requests.py filters it, so a rejected input is one line, not a
  traceback.
- ``worker_index`` (``bentoml._internal.context.server_context``): which of `bentoml
  serve`'s workers this process is, so that each writes files of its own (the served-input
  log, the feedback store).
"""

from __future__ import annotations

from _bentoml_sdk.method import APIMethod
from bentoml._internal.service.openapi.specification import MediaType, Schema

SERVER_LOGGER = "bentoml._internal.server.http_app"


def worker_index() -> int:
    """This process's worker number under `bentoml serve` (0 outside it)."""
    from bentoml._internal.context import server_context

    return server_context.worker_index or 0


__all__ = ["SERVER_LOGGER", "APIMethod", "MediaType", "Schema", "worker_index"]
