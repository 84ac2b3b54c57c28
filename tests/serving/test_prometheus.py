"""The service's metrics as an operator's Prometheus sees them: a real Prometheus (Debian's
`prometheus`, a plain process on 127.0.0.1) scrapes the session's `bentoml serve` every
second, with deploy/prometheus/alerts.yml loaded; known requests go to the service, and
what they did is read back through Prometheus's HTTP API (/api/v1/query).

The server is shared with the other tests, so each test compares what Prometheus holds
before and after its own requests, each read from a scrape that began after the requests
before it had been answered.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from harness.malformed import FORM, JSON, MALFORMED, PNG, ZEROS, form_of, json_body
from harness.serve import free_port
from tests.serving.images import render

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
JOB = "mnist"
WAIT_S = 30
# Published by a drift job, not by the service (deploy/prometheus/alerts.yml).
NOT_FROM_THE_SERVICE = {"mnist_drift_detected"}

Values = dict[tuple[str, ...], float]


@pytest.fixture(scope="module")
def prometheus(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping `server` every second; yields its base URL once it has
    scraped the service."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus: run `make system-tools` (Debian: apt-get install prometheus)")
    folder = tmp_path_factory.mktemp("prometheus-server")
    config = folder / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [{"targets": [server.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    url = f"http://127.0.0.1:{free_port()}"
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address={url.removeprefix('http://')}",
                f"--storage.tsdb.path={folder / 'data'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "prometheus to be ready", log_path)
        scraped_after(url, time.time())
        yield url
    finally:
        process.terminate()  # by its process id, whatever happened above
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], bool], what: str, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    log = log_path.read_text()[-3000:] if log_path else ""
    pytest.fail(f"waited {WAIT_S} s for {what}\n{log}")


def query(prometheus: str, promql: str) -> list[dict]:
    """An instant query's result through Prometheus's HTTP API: [{"metric", "value"}]."""
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def scraped_after(prometheus: str, moment: float) -> None:
    """Wait until Prometheus holds a successful scrape of the service begun after
    `moment` (time.time()), so that it reflects every request answered before then."""

    def fresh() -> bool:
        # timestamp() of the selector itself: the scrape's own time, not the query's
        [scraped] = query(prometheus, f'timestamp(up{{job="{JOB}"}})') or [None]
        [up] = query(prometheus, f'up{{job="{JOB}"}}') or [None]
        return (
            bool(scraped and up) and float(scraped["value"][1]) > moment and up["value"][1] == "1"
        )

    wait_for(fresh, f"a scrape of the service after {moment}")


def values(prometheus: str, promql: str, *labels: str) -> Values:
    """The series of `promql`, keyed by the values of `labels`."""
    return {
        tuple(item["metric"].get(label, "") for label in labels): float(item["value"][1])
        for item in query(prometheus, promql)
    }


def increase(before: Values, after: Values) -> Values:
    """What each series gained; the series that did not change left out."""
    gained = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in before.keys() | after}
    return {key: change for key, change in gained.items() if change}


def of_the_service(selector: str) -> str:
    """`selector` (a metric name, maybe with label matchers) limited to the service's job."""
    name, _, matchers = selector.partition("{")
    matchers = matchers.rstrip("}")
    return f'{name}{{job="{JOB}"{"," + matchers if matchers else ""}}}'


# What a Reading reads: name -> (PromQL, the labels that key its series).
READ: dict[str, tuple[str, tuple[str, ...]]] = {
    "digits": (
        f"sum by (endpoint, digit) ({of_the_service('mnist_predictions_total')})",
        ("endpoint", "digit"),
    ),
    "confidence_count": (of_the_service("mnist_prediction_confidence_ratio_count"), ("endpoint",)),
    "confidence_sum": (of_the_service("mnist_prediction_confidence_ratio_sum"), ("endpoint",)),
    "confidence_buckets": (
        of_the_service("mnist_prediction_confidence_ratio_bucket"),
        ("endpoint", "le"),
    ),
    "latency_count": (of_the_service("mnist_request_duration_seconds_count"), ("endpoint",)),
    "latency_inf": (
        of_the_service('mnist_request_duration_seconds_bucket{le="+Inf"}'),
        ("endpoint",),
    ),
    "latency_sum": (of_the_service("mnist_request_duration_seconds_sum"), ("endpoint",)),
    "rejected": (of_the_service("mnist_rejected_inputs_total"), ("reason",)),
}


class Reading:
    """The service's own series in Prometheus, read now and again later."""

    def __init__(self, prometheus: str) -> None:
        self.prometheus = prometheus
        scraped_after(prometheus, time.time())
        self.values = {
            name: values(prometheus, promql, *labels) for name, (promql, labels) in READ.items()
        }

    def gained_since(self, earlier: Reading) -> dict[str, Values]:
        return {name: increase(earlier.values[name], self.values[name]) for name in self.values}


def test_answered_digits_confidences_and_latencies_read_back_from_prometheus(
    prometheus: str, server: str, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    from serving.metrics import CONFIDENCE_BUCKETS  # here: it creates metrics as it loads

    digits = test_digits[0]
    before = Reading(prometheus)
    answers: dict[str, list[list[float]]] = {"/predict": [], "/predict_image": []}
    with httpx.Client(base_url=server, timeout=30) as client:
        for payload in (
            {"images": digits[:40].tolist()},
            {"images_b64": base64.b64encode(digits[40:60].tobytes()).decode()},
        ):
            response = client.post("/predict", json=payload)
            assert response.status_code == 200, response.text
            answers["/predict"] += response.json()["probabilities"]
        for digit in digits[60:63]:
            response = client.post(
                "/predict_image", content=render(digit), headers={"Content-Type": PNG}
            )
            assert response.status_code == 200, response.text
            answers["/predict_image"].append(response.json()["probabilities"])
    gained = Reading(prometheus).gained_since(before)

    expected_digits, expected_buckets = {}, {}
    for endpoint, probabilities in answers.items():
        array = np.array(probabilities)  # (N, 10): the floats the service observed, exactly
        for digit, count in enumerate(np.bincount(array.argmax(axis=1), minlength=10)):
            if count:
                expected_digits[endpoint, str(digit)] = float(count)
        top = array.max(axis=1)
        for le in (*CONFIDENCE_BUCKETS, float("inf")):
            label = "+Inf" if le == float("inf") else str(le)
            if (top <= le).any():
                expected_buckets[endpoint, label] = float((top <= le).sum())
        assert gained["confidence_sum"].get((endpoint,)) == pytest.approx(top.sum(), rel=1e-9)
    assert gained["digits"] == expected_digits
    assert gained["confidence_count"] == {("/predict",): 60.0, ("/predict_image",): 3.0}
    assert gained["confidence_buckets"] == expected_buckets
    assert gained["latency_count"] == {("/predict",): 2.0, ("/predict_image",): 3.0}
    assert gained["latency_inf"] == gained["latency_count"]
    assert set(gained["latency_sum"]) == {("/predict",), ("/predict_image",)}
    assert all(seconds > 0 for seconds in gained["latency_sum"].values())
    assert gained["rejected"] == {}
    # The buckets resolve sub-millisecond answers, for every API.
    finest = values(
        prometheus, of_the_service('mnist_request_duration_seconds_bucket{le="0.0005"}'), "endpoint"
    )
    assert set(finest) == {("/predict",), ("/predict_image",), ("/model_info",), ("/feedback",)}


# (path, body, Content-Type, the status, the reason it is counted under)
BAD_REQUESTS = [
    ("/predict", json_body({"images": [[1, 2, 3]]}), JSON, 400, "images"),
    ("/predict", json_body({}), JSON, 400, "images"),
    ("/predict", json_body({"images_b64": "!!!not base64"}), JSON, 400, "images_b64"),
    ("/predict", json_body({"images": [ZEROS], "dtype": "float64"}), JSON, 400, "schema"),
    ("/predict", b"{bad", JSON, 400, "schema"),
    ("/predict", json_body({"images": [ZEROS]}), "text/plain", 415, "content_type"),
    ("/predict_image", b"hello", PNG, 400, "image"),
    ("/predict_image", bytes(33 * 2**20), PNG, 413, "body_too_large"),
    ("/predict_image", form_of(), FORM, 400, "form"),
    ("/model_info", b"{bad", JSON, 400, "schema"),
]


def test_rejected_inputs_are_counted_by_reason(prometheus: str, server: str) -> None:
    from serving.metrics import REASONS

    before = Reading(prometheus)
    with httpx.Client(base_url=server, timeout=60) as client:
        for path, body, content_type, status, _ in BAD_REQUESTS:
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            assert response.status_code == status, (path, content_type, response.text)
    gained = Reading(prometheus).gained_since(before)

    reasons: dict[tuple[str, ...], float] = {}
    requests: dict[tuple[str, ...], float] = {}
    for path, _, _, _, reason in BAD_REQUESTS:
        reasons[(reason,)] = reasons.get((reason,), 0.0) + 1
        requests[(path,)] = requests.get((path,), 0.0) + 1
    assert {reason for (reason,) in reasons} <= set(REASONS)
    assert gained["rejected"] == reasons
    assert gained["latency_count"] == requests  # refused requests are timed too
    assert gained["digits"] == gained["confidence_count"] == {}  # and answer no digits


def test_every_malformed_request_counts_once_under_a_named_reason(
    prometheus: str, server: str
) -> None:
    """The corpus of malformed requests (harness/malformed.py): each 4xx is one rejection,
    whichever layer refused it (the guard, the API, BentoML's own validation), and none
    falls through to "other"."""
    from serving.metrics import REASONS

    before = Reading(prometheus)
    statuses = []
    with httpx.Client(base_url=server, timeout=60) as client:
        for path, body, content_type, _ in MALFORMED:
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            statuses.append(response.status_code)
    assert all(400 <= status < 500 for status in statuses), statuses
    gained = Reading(prometheus).gained_since(before)["rejected"]
    assert sum(gained.values()) == len(MALFORMED), gained
    assert ("other",) not in gained
    # /feedback's flood and full-store refusals are not malformed requests (test_feedback.py)
    unmalformed = {"other", "content_length", "rate_limited", "store_full"}
    assert {reason for (reason,) in gained} == set(REASONS) - unmalformed


def test_alerting_rules_load_evaluate_and_select_series_the_service_exports(
    prometheus: str,
) -> None:
    """deploy/prometheus/alerts.yml in a live Prometheus: every rule evaluates without
    error, and every series it selects by name and exact label values exists, scraped
    from the service; a renamed metric, label or bucket would leave an alert that can
    never fire."""

    def evaluated() -> list[dict]:
        response = httpx.get(f"{prometheus}/api/v1/rules", timeout=10)
        groups = response.json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else []

    wait_for(lambda: bool(evaluated()), "the rules to be evaluated")
    rules = evaluated()
    assert {rule["name"] for rule in rules} == {
        rule["alert"] for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    }
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule

    selectors = set()
    for rule in rules:
        for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", rule["query"]):
            exact = re.findall(r'\w+\s*=\s*"[^"]*"', matchers)
            selectors.add(of_the_service(f"{name}{{{','.join(sorted(exact))}}}"))
        for name in re.findall(r"\b(mnist_\w+)\b(?![{\w])", rule["query"]):
            selectors.add(of_the_service(name))
    names = {selector.partition("{")[0] for selector in selectors}
    assert {
        "bentoml_service_request_total",
        "mnist_prediction_confidence_ratio_bucket",
        "mnist_prediction_confidence_ratio_count",
        "mnist_drift_detected",
    } <= names
    for selector in sorted(selectors):
        if selector.partition("{")[0] not in NOT_FROM_THE_SERVICE:
            assert query(prometheus, selector), f"no series {selector} in Prometheus"
