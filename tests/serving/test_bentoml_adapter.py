"""The few BentoML names outside its public API that the service uses, all in
serving/bentoml_adapter.py: each still exists and still behaves as the service relies on,
so that a BentoML upgrade that moves or changes one fails here, by name, and not as a
broken OpenAPI page or a traceback in the log."""

from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path

import attrs
import bentoml

from serving import bentoml_adapter
from serving.bentoml_adapter import SERVER_LOGGER, APIMethod, MediaType, Schema

SERVING = Path(bentoml_adapter.__file__).parent
PRIVATE = ("_bentoml_sdk", "bentoml._internal")


def test_bentoml_api_still_returns_the_class_the_image_api_extends() -> None:
    async def echo(self, text: str) -> str:
        return text

    method = bentoml.api(echo)
    assert isinstance(method, APIMethod) and attrs.has(type(method))
    body = method.openapi_request()  # what ImageUploadAPI extends: {"content": {type: ...}}
    assert set(body) >= {"content"} and body["content"]


def test_the_openapi_objects_still_take_what_the_image_api_gives_them() -> None:
    part = Schema(type="string", format="binary", description="a file")
    form = Schema(type="object", properties={"image": part}, minProperties=1, maxProperties=1)
    assert MediaType(schema=form).schema.properties["image"].format == "binary"


def test_the_server_logger_is_the_one_bentomls_http_app_logs_with() -> None:
    module = importlib.import_module(SERVER_LOGGER)
    loggers = [v for v in vars(module).values() if isinstance(v, logging.Logger)]
    assert [logger.name for logger in loggers] == [SERVER_LOGGER]


def test_no_other_serving_module_reaches_past_the_public_api() -> None:
    offenders = []
    for path in sorted(SERVING.glob("*.py")):
        if path.name == "bentoml_adapter.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(PRIVATE)]
    assert offenders == []
