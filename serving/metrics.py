"""The service's own Prometheus metrics: what an operator graphs and alerts on
(deploy/prometheus/alerts.yml, docs/serving.md).

In: what the service answered or refused, told by the few places that answer or refuse
(serving/service.py, serving/guard.py, serving/requests.py). Out: these series in the
service's /metrics, beside BentoML's own (BentoML gathers every worker's values):

- ``mnist_predictions_total{endpoint, digit}``: digits answered, by predicted digit;
- ``mnist_prediction_confidence_ratio{endpoint}``: histogram of each answered digit's
  top class probability, with buckets that resolve 0.5 to 1;
- ``mnist_request_duration_seconds{endpoint}``: histogram of the time from a request's
  arrival to its answer, per API, with buckets that resolve sub-millisecond answers;
- ``mnist_rejected_inputs_total{reason}``: requests refused as unusable input, by REASONS.

Every label value comes from a fixed set (ENDPOINTS, digits 0-9, REASONS), never from
request text, so the number of series stays bounded whatever clients send. Each is
created at import, so every series exists from the first scrape with the value 0 and
``rate()``/``increase()`` see the first event too.

prometheus_client is imported directly, as serving/service.py does for its batch
histogram: BentoML 1.4 deprecates ``bentoml.metrics`` (a lazy alias of prometheus_client)
in favour of it. ``bentoml serve`` sets PROMETHEUS_MULTIPROC_DIR before its workers
import the service, so the values land in the files its /metrics gathers.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

import numpy as np
import prometheus_client

from serving.contract import NUM_CLASSES

# The API routes, as BentoML's own metrics name them in their `endpoint` label.
PREDICT_ENDPOINTS = ("/predict", "/predict_image")
ENDPOINTS = (*PREDICT_ENDPOINTS, "/model_info", "/feedback")

# Why a request was refused. The first three are the request field a BadInput names
# (serving/preprocess.py); the rest are refused before the API sees the request.
REASONS = (
    "images",  # /predict: `images` is not N digits of 0-255 (or 0-1) pixels, or both/neither sent
    "images_b64",  # /predict: `images_b64` is not base64 of whole digits
    "image",  # /predict_image: not a PNG/JPEG, too large, corrupt, or blank
    "schema",  # BentoML's own validation: invalid JSON, a field of the wrong type or value
    "body_too_large",  # 413: the body is over the service's limit (serving/guard.py)
    "content_type",  # 415: a Content-Type (or form part type) the route does not take
    "content_length",  # 400: a Content-Length that is not a number
    "form",  # 400: a multipart form that is not exactly one file
    "rate_limited",  # 429: /feedback's corrections came faster than a worker takes them
    "store_full",  # 507: /feedback's store is at its cap until the pipeline imports it
    "other",  # any other 4xx of an API route, or a reason not listed here
)

CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
# BentoML's own request histogram starts at 5 ms; a small request here takes less.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

PREDICTIONS = prometheus_client.Counter(
    "mnist_predictions_total",
    "Digits answered, by the digit predicted",
    ["endpoint", "digit"],
)
CONFIDENCE = prometheus_client.Histogram(
    "mnist_prediction_confidence_ratio",
    "Top class probability of each digit answered",
    ["endpoint"],
    buckets=CONFIDENCE_BUCKETS,
)
LATENCY = prometheus_client.Histogram(
    "mnist_request_duration_seconds",
    "Time from a request's arrival to its answer, per API (4xx answers included)",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = prometheus_client.Counter(
    "mnist_rejected_inputs_total",
    "Requests refused as unusable input, by reason",
    ["reason"],
)

# The label children, looked up once: the hot path only increments and observes.
_predictions = {
    endpoint: [PREDICTIONS.labels(endpoint, str(digit)) for digit in range(NUM_CLASSES)]
    for endpoint in PREDICT_ENDPOINTS
}
_confidence = {endpoint: CONFIDENCE.labels(endpoint) for endpoint in PREDICT_ENDPOINTS}
_latency = {endpoint: LATENCY.labels(endpoint) for endpoint in ENDPOINTS}
_rejected = {reason: REJECTED.labels(reason) for reason in REASONS}


def answered(endpoint: str, probabilities: np.ndarray) -> None:
    """Count the digits of one answer of `endpoint` (one of PREDICT_ENDPOINTS), given its
    (N, 10) probabilities: at most 10 counter increments, one confidence observation
    per digit."""
    counts = np.bincount(probabilities.argmax(axis=1), minlength=NUM_CLASSES)  # (10,)
    per_digit = _predictions[endpoint]
    for digit in np.flatnonzero(counts).tolist():
        per_digit[digit].inc(int(counts[digit]))
    observe = _confidence[endpoint].observe
    for top in probabilities.max(axis=1).tolist():
        observe(top)


def rejected(reason: str) -> None:
    """Count one request refused as unusable input; `reason` one of REASONS (any other
    counts as "other", so that the label stays a fixed set)."""
    _rejected.get(reason, _rejected["other"]).inc()
    request = _request.get()
    if request is not None:
        request.rejected = True


class RequestTimer:
    """One HTTP request, from its arrival to its answer, started by the outermost of the
    service's middlewares (serving/requests.py) in the request's context. On `done` it
    observes the request's latency if it was for an API, and counts a 4xx of an API that
    no one counted as refused input (BentoML's own validation answers those) as "schema"
    or "other"."""

    __slots__ = ("_started", "_token", "endpoint", "rejected")

    def __init__(self, path: str) -> None:
        self.endpoint = path if path in _latency else None
        self.rejected = False
        self._started = time.perf_counter()
        self._token = _request.set(self)

    def done(self, status: int) -> None:
        _request.reset(self._token)
        if self.endpoint is None:
            return
        _latency[self.endpoint].observe(time.perf_counter() - self._started)
        if 400 <= status < 500 and not self.rejected:
            rejected("schema" if status == 400 else "other")


# The request being answered in this context: inner layers mark it as counted.
_request: ContextVar[RequestTimer | None] = ContextVar("mnist_metrics_request", default=None)
