"""The MNIST classifier as a BentoML service: `bentoml serve serving.service:MNISTClassifier`.

In: HTTP requests (JSON digit arrays, or the bytes of a PNG/JPEG). Out: labels and the
10 class probabilities, computed by ONNX Runtime from the BentoML model MNIST_MODEL_TAG
(default `mnist-classifier:latest`; see serving/contract.py for its layout).

Endpoints (all POST, as BentoML routes its APIs):
- /predict        {"images": [[...]] | "images_b64": "...", "dtype": "uint8" | "float32"}
                  -> {"labels": [N], "probabilities": [N][10], "unsure": [N]}
- /predict_image  one PNG/JPEG: the file itself as the body (Content-Type image/png,
                  image/jpeg or application/octet-stream), or a multipart/form-data form
                  of one file part, any field name (curl -F image=@digit.png)
                  -> {"label", "probabilities", "unsure", "preprocessed"}
- /feedback       {"label": 0-9, "digit": 28 rows of 28 grey levels} -> {"stored", "id"}:
                  a correction, kept for the pipeline to learn from (serving/feedback.py)
- /model_info     {} -> info.json of the model, plus its BentoML tag and the size limits
- GET /ui/        a page to draw or upload a digit and see what the model makes of it
                  (serving/ui.py, serving/static/)
- GET /           the API's OpenAPI page, with a link to /ui/ and nothing loaded from
                  outside the service (serving/ui.py's ApiPage, serving/static/api.html)
BentoML adds GET /livez, /readyz (ready once a worker has loaded and warmed the model)
and /metrics (Prometheus: BentoML's request metrics and this service's own, listed in
serving/metrics.py). Bad input gets a 4xx with a JSON body: 400 {"error": ...,
"detail": [{"loc": [field], "msg": what is wrong}]}; 413/415 {"error": ...} for a body
over MAX_BODY_BYTES or of the wrong Content-Type (see serving/guard.py).

Environment: MNIST_MODEL_TAG; MNIST_ORT_THREADS (ONNX Runtime intra-op threads per
worker, default 1); MNIST_BULK_ROWS (a run of at least this many digits is split across
the cores, default 2048); MNIST_MAX_BATCH (rows per model run, default 256; 1 = no batching);
MNIST_INLINE_ROWS (a model run of at most this many rows stays on the event loop, default 16);
MNIST_SERVED_LOG (0: no record of served digits; default 1), MNIST_SERVED_LOG_DIR (where
that record goes, default ./served_log) and MNIST_SERVED_LOG_MAX_MB (its cap per worker,
default 64): see serving/served_log.py; MNIST_FEEDBACK_DIR (the corrections' store, default
./feedback), MNIST_FEEDBACK_MAX_MB (its cap per worker, default 16) and
MNIST_FEEDBACK_PER_MINUTE (corrections a worker takes a minute, default 60): see
serving/feedback.py;
MNIST_WORKERS (worker processes, default 2, one per core); MNIST_MAX_CONCURRENCY (requests
a worker takes at once, default 64; more get 429); MNIST_REQUESTS_PER_CONNECTION (answers
before a connection is closed, default 100); MNIST_ACCESS_LOG (1: a line per request).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
from pathlib import Path
from typing import Annotated, Any

import attrs
import bentoml
import numpy as np
import prometheus_client
from bentoml.models import BentoModel
from bentoml.validators import ContentType
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from serving import feedback, metrics, preprocess, served_log, ui
from serving.batching import MicroBatcher
from serving.bentoml_adapter import APIMethod, MediaType, Schema
from serving.contract import IMAGE_SIDE, MODEL_NAME, PIXEL_LEVELS
from serving.guard import FORM, RequestGuard
from serving.preprocess import BadInput, PixelDtype
from serving.requests import RequestLog, install_filters
from serving.runner import Runner

MODEL_TAG = os.environ.get("MNIST_MODEL_TAG", f"{MODEL_NAME}:latest")
ORT_THREADS = int(os.environ.get("MNIST_ORT_THREADS", "1"))
BULK_ROWS = int(os.environ.get("MNIST_BULK_ROWS", "2048"))
MAX_BATCH = int(os.environ.get("MNIST_MAX_BATCH", "256"))
# A model run of at most this many digits (well under a millisecond) runs on the event
# loop itself: handing it to a thread and back costs more than the run.
INLINE_ROWS = int(os.environ.get("MNIST_INLINE_ROWS", "16"))
WORKERS = int(os.environ.get("MNIST_WORKERS", "2"))
# Requests a worker takes at once; more are refused at once with 429 and a JSON body
# (BentoML's traffic.max_concurrency) rather than queued into growing latency.
MAX_CONCURRENCY = int(os.environ.get("MNIST_MAX_CONCURRENCY", "64"))
# A connection is closed after this many answers, so that kept-alive clients spread over
# the workers again (after a restarted worker, say); 0 = never.
REQUESTS_PER_CONNECTION = int(os.environ.get("MNIST_REQUESTS_PER_CONNECTION", "100"))
ACCESS_LOG = os.environ.get("MNIST_ACCESS_LOG", "0") == "1"  # a line per request: off by default
SERVED_LOG = os.environ.get("MNIST_SERVED_LOG", "1") != "0"
SERVED_LOG_DIR = os.environ.get("MNIST_SERVED_LOG_DIR", "served_log")
SERVED_LOG_MAX_BYTES = int(float(os.environ.get("MNIST_SERVED_LOG_MAX_MB", "64")) * 2**20)
FEEDBACK_DIR = os.environ.get("MNIST_FEEDBACK_DIR", "feedback")
FEEDBACK_MAX_BYTES = int(float(os.environ.get("MNIST_FEEDBACK_MAX_MB", "16")) * 2**20)
FEEDBACK_PER_MINUTE = int(os.environ.get("MNIST_FEEDBACK_PER_MINUTE", "60"))
FEEDBACK_MAX_BODY = 16 * 2**10  # a 28x28 digit as a JSON list, and room to spare
# This worker's corrections (FeedbackGate refuses a flood or a full store before the API).
CORRECTIONS = feedback.FeedbackStore(FEEDBACK_DIR, FEEDBACK_MAX_BYTES)
MAX_BODY_BYTES = 32 * 2**20  # 10,000 uint8 digits as a JSON list fit; floats need images_b64

# BentoML's /metrics gathers prometheus_client metrics from all workers (multiprocess mode).
BATCH_ROWS = prometheus_client.Histogram(
    "mnist_model_batch_rows",
    "Digits per ONNX Runtime run (adaptive batching at work when > 1)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000),
)


UNSURE = (
    "the top probability is below the model's unsure threshold (model_info's "
    "`unsure_below`): a guess, not an answer to rely on"
)


ANSWER_ID = (
    "This answer's id in the served-input log: POST /feedback takes it (with a digit's "
    "`index` in the answer) in place of the digit; null when the log is off"
)
ANSWER_ID_PATTERN = r"^[0-9a-f]{16}$"


class Prediction(BaseModel):
    labels: list[int] = Field(description="Most likely digit for each input, in order")
    probabilities: list[list[float]] = Field(
        description="N rows of 10 class probabilities, calibrated on the validation split"
    )
    unsure: list[bool] = Field(description=f"For each input, true when {UNSURE}")
    answer_id: str | None = Field(description=ANSWER_ID)


GreyLevel = Annotated[int, Field(ge=0, le=PIXEL_LEVELS)]
DigitRow = Annotated[list[GreyLevel], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]


class FeedbackReceipt(BaseModel):
    stored: bool = Field(description="True: the correction is on disk")
    id: str = Field(
        description="sha256 of the digit's pixels, 16 hex digits; or the answer_id it corrects"
    )


class ImagePrediction(BaseModel):
    label: int
    probabilities: list[float] = Field(description="10 class probabilities, calibrated")
    unsure: bool = Field(description=f"True when {UNSURE}")
    answer_id: str | None = Field(description=ANSWER_ID)
    preprocessed: list[list[int]] = Field(
        description="The 28x28 image the model saw: rows of grey levels 0-255, light ink on black"
    )


def rejected(api: str, error: BadInput) -> ValidationError:
    """A BadInput as the ValidationError BentoML turns into a 400 with a JSON body;
    counted in /metrics by the field at fault."""
    metrics.rejected(error.field)
    detail = InitErrorDetails(
        type=PydanticCustomError("bad_input", "{reason}", {"reason": str(error)}),
        loc=(error.field,),
        input=None,
    )
    return ValidationError.from_exception_data(api, [detail])


# /predict_image takes the file as the body or as the one file part of a form; the guard
# (serving/guard.py) unwraps the form, so the API itself sees one kind of request.
IMAGE_TYPES = ["image/*", "application/octet-stream"]
IMAGE_FIELDS = ("image", "file")  # the documented field names of the form; any name works


@attrs.define
class ImageUploadAPI(APIMethod):
    """A BentoML API whose OpenAPI request body lists the raw file under each media type
    it takes and the form upload beside it. BentoML has no public way to declare two
    request bodies for one API, so this extends what @bentoml.api returns."""

    def openapi_request(self) -> dict[str, Any]:
        (raw,) = super().openapi_request()["content"].values()  # BentoML's: the file as body
        part = Schema(type="string", format="binary", description="The PNG or JPEG file")
        form = Schema(
            type="object",
            description=(
                "A form of exactly one part, a file: the PNG or JPEG. Documented field "
                f"names: {', '.join(IMAGE_FIELDS)}; any other name is accepted too. No text "
                "fields. The same limits apply as to the raw body."
            ),
            properties=dict.fromkeys(IMAGE_FIELDS, part),
            additionalProperties=part,
            minProperties=1,
            maxProperties=1,
        )
        return {"content": {**dict.fromkeys(IMAGE_TYPES, raw), FORM: MediaType(schema=form)}}


# Tracing is off by default (sample_rate 0), yet BentoML's OpenTelemetry middleware still
# costs a large share of a small request's CPU (docs/performance.md). Skip it for our
# routes; to trace them, set tracing.sample_rate and override tracing.excluded_urls.
UNTRACED_ROUTES = [
    "/predict",
    "/feedback",
    "/model_info",
    "/livez",
    "/readyz",
    "/healthz",
    "/metrics",
    "/ui",
    "/static_content",
    "/$",  # the API page
]  # regexes, searched in the URL


@bentoml.service(
    workers=WORKERS,
    traffic={"timeout": 30, "max_concurrency": MAX_CONCURRENCY},
    tracing={"excluded_urls": UNTRACED_ROUTES},
    logging={"access": {"enabled": ACCESS_LOG}},
)
@bentoml.asgi_app(ui.app, path="/ui", name="ui")
class MNISTClassifier:
    """Classifies handwritten digits (MNIST) with an ONNX model."""

    model = BentoModel(MODEL_TAG)  # a class attribute, so `bentoml build` packs the model

    def __init__(self) -> None:
        self.runner = Runner(Path(self.model.path), threads=ORT_THREADS, bulk_rows=BULK_ROWS)
        self.batcher = MicroBatcher(
            self.runner.run,
            max_batch=MAX_BATCH,
            on_batch=BATCH_ROWS.observe,
            inline_rows=INLINE_ROWS,
        )
        # Everything loaded so far (BentoML, pydantic, ONNX Runtime) lives as long as the
        # worker. A full garbage collection would walk all of it, pausing the event loop
        # for every request in flight; frozen, collections skip it.
        # Older models carry no threshold: nothing is flagged.
        self.unsure_below = float(self.runner.info.get("unsure_below", 0.0))
        CORRECTIONS.model = str(self.model.tag)
        self.served = served_log.ServedLog(
            str(self.model.tag), SERVED_LOG_DIR, SERVED_LOG_MAX_BYTES
        )
        gc.freeze()

    @bentoml.on_shutdown
    def write_served_log(self) -> None:
        """The answers the served-input log still keeps go to its file as the worker stops."""
        self.served.close()

    @bentoml.api
    async def predict(
        self,
        images: Annotated[
            list[Any] | None,
            Field(description="N digits, each 28 rows of 28 numbers or 784 numbers, row-major"),
        ] = None,
        images_b64: Annotated[
            str | None,
            Field(
                description="Compact alternative to `images`: base64 of the raw N x 784 pixels, "
                "row-major, 1 byte each (uint8) or 4 bytes little-endian (float32)"
            ),
        ] = None,
        dtype: Annotated[
            PixelDtype,
            Field(description="uint8: whole numbers 0-255; float32: numbers 0-1 (pixels/255)"),
        ] = "uint8",
    ) -> Prediction:
        """Classify a batch of 28x28 digits, light ink on dark as in MNIST."""
        try:
            if (images is None) == (images_b64 is None):
                raise BadInput(
                    "send exactly one of `images` (nested list) or `images_b64`", field="images"
                )
            if images is not None:
                pixels = preprocess.digits_from_array(images, dtype)
            else:
                pixels = preprocess.digits_from_base64(images_b64 or "", dtype)
        except BadInput as error:
            raise rejected("predict", error) from None
        probabilities = await self.batcher(pixels)  # (N, 10)
        metrics.answered("/predict", probabilities)
        answer_id = self.served.record("/predict", pixels, probabilities) if SERVED_LOG else None
        return Prediction(
            labels=probabilities.argmax(axis=1).tolist(),
            probabilities=probabilities.tolist(),
            unsure=(probabilities.max(axis=1) < self.unsure_below).tolist(),
            answer_id=answer_id,
        )

    @ImageUploadAPI
    async def predict_image(
        self, image: Annotated[bytes, ContentType("image/*")], /
    ) -> ImagePrediction:
        """Classify one PNG/JPEG of a digit: a drawing, a scan or a photo of paper, any size,
        colour or grey, either polarity. Send the file as the body, or as a form's only
        part. The digit is found first (lighting evened out, ruled lines and specks
        removed), then framed as in MNIST; `preprocessed` is what the model saw."""
        try:
            # In a thread: a 5 MiB PNG can hold 16 megapixels, too long to block the event loop.
            digit = await asyncio.to_thread(preprocess.digit_from_image, image)  # (28, 28) uint8
        except BadInput as error:
            raise rejected("predict_image", error) from None
        pixels = digit.astype(np.float32).reshape(1, 1, IMAGE_SIDE, IMAGE_SIDE) / np.float32(
            PIXEL_LEVELS
        )
        batch = await self.batcher(pixels)  # (1, 10)
        metrics.answered("/predict_image", batch)
        answer_id = self.served.record("/predict_image", pixels, batch) if SERVED_LOG else None
        probabilities = batch[0]
        return ImagePrediction(
            label=int(probabilities.argmax()),
            probabilities=probabilities.tolist(),
            unsure=bool(probabilities.max() < self.unsure_below),
            answer_id=answer_id,
            preprocessed=digit.tolist(),
        )

    @bentoml.api
    async def feedback(
        self,
        label: Annotated[int, Field(ge=0, le=9, description="What the digit really is")],
        digit: Annotated[
            list[DigitRow] | None,
            Field(
                min_length=IMAGE_SIDE,
                max_length=IMAGE_SIDE,
                description="The 28x28 image the model saw (a /predict_image answer's "
                "`preprocessed`): rows of grey levels 0-255, light ink on black",
            ),
        ] = None,
        answer_id: Annotated[
            str | None,
            Field(
                pattern=ANSWER_ID_PATTERN,
                description="Instead of `digit`: the `answer_id` of the answer to correct",
            ),
        ] = None,
        index: Annotated[
            int,
            Field(
                ge=0,
                le=preprocess.MAX_IMAGES - 1,
                description="With `answer_id`: the digit's place",
            ),
        ] = 0,
    ) -> FeedbackReceipt:
        """Say what a digit really was, sending the digit or the id of the answer it was
        in: the correction is stored for the pipeline, which learns from it or keeps it
        aside to test on (docs/feedback.md)."""
        if (digit is None) == (answer_id is None):
            neither = BadInput("send one of `digit` or `answer_id`", field="digit")
            raise rejected("feedback", neither)
        if answer_id is not None:
            if not SERVED_LOG:
                raise rejected(
                    "feedback",
                    BadInput(
                        "this server keeps no record of its answers (MNIST_SERVED_LOG=0): "
                        "send the `digit` instead",
                        field="answer_id",
                    ),
                )
            store = functools.partial(CORRECTIONS.add_by_answer, label, answer_id, index)
        else:
            pixels = np.asarray(digit, dtype=np.uint8)  # (28, 28), validated above
            store = functools.partial(CORRECTIONS.add, label, pixels)
        identity = await asyncio.to_thread(store)  # fsync: in a thread
        return FeedbackReceipt(stored=True, id=identity)

    @bentoml.api
    async def model_info(self) -> dict[str, Any]:
        """The model's info.json (registry version, alias, metrics, git commit...)."""
        return {
            **self.runner.info,
            "bentoml_tag": str(self.model.tag),
            "limits": {
                "max_body_bytes": MAX_BODY_BYTES,
                "max_images_per_request": preprocess.MAX_IMAGES,
                "max_image_bytes": preprocess.MAX_IMAGE_BYTES,
                "max_image_pixels": preprocess.MAX_IMAGE_PIXELS,
            },
        }


install_filters()
MNISTClassifier.add_asgi_middleware(RequestLog, max_requests=REQUESTS_PER_CONNECTION)
MNISTClassifier.add_asgi_middleware(
    RequestGuard,
    max_bytes=MAX_BODY_BYTES,
    content_types={
        "/predict": ["application/json"],
        "/predict_image": [*IMAGE_TYPES, FORM],
        "/model_info": ["application/json"],
        "/feedback": ["application/json"],
    },
    form_uploads=["/predict_image"],
    route_limits={"/feedback": FEEDBACK_MAX_BODY},
)
MNISTClassifier.add_asgi_middleware(
    feedback.FeedbackGate, path="/feedback", store=CORRECTIONS, per_minute=FEEDBACK_PER_MINUTE
)
# GET / answers with our API page (serving/static/api.html: links /ui/, loads nothing from
# other origins) instead of BentoML's.
MNISTClassifier.add_asgi_middleware(ui.ApiPage)
