"""Serving speed: a real `bentoml serve` on 127.0.0.1, loaded by `wrk` from another process.

Measures, each for --duration seconds at --concurrency connections:
- single-digit /predict, JSON list body and base64 body: req/s, p50, p99; then the base64
  case again with batching off (MNIST_MAX_BATCH=1), with BentoML's access log off, and
  with 1 worker of 2 ONNX Runtime threads;
- the record of served digits (serving/served_log.py): the base64 case on the default
  server (record on) and on one with MNIST_SERVED_LOG=0, alternating runs;
- one /predict of 10,000 digits, base64 and JSON list: median of 5;
- /predict_image with a 200x200 PNG of a real digit: req/s.

In: the model to serve: --model-tag (from the store BENTOML_HOME points at); else the
model that `make run` packaged last (mnist-classifier:latest, the champion); else, before
any `make run`, the stand-in from harness/fixture_model.py in a temporary store.
Needs wrk (`apt-get install -y wrk`) and the MNIST mirror (MNIST_MIRROR or ../shared/mnist).
Out: a table on stdout. Loopback only; every load run is bounded.
`python -m bench` runs this with the pipeline benchmark and writes docs/performance.md.

    python -m bench.serving_bench [--model-tag mnist-classifier:latest] [--duration 10]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil  # a BentoML dependency
from PIL import Image

from harness.mnist import load_mnist
from harness.report import Report
from harness.serve import ServeError, bentoml_serve, free_port, stop

REPO = Path(__file__).resolve().parents[1]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
local f = io.open(os.getenv("BODY"), "rb"); wrk.body = f:read("*all"); f:close()
"""


@dataclass
class LoadResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its workers (user + system)."""
        root = psutil.Process(self.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


@contextmanager
def serve(env: dict[str, str], log_path: Path) -> Iterator[Server]:
    """`bentoml serve` of the service; exits with its log if it does not get ready."""
    try:
        with bentoml_serve(
            "serving.service:MNISTClassifier", env=env, cwd=REPO, log_path=log_path
        ) as served:
            yield Server(served.url, served.pid)
    except ServeError as error:
        sys.exit(str(error))


def wrk(
    url: str, body: Path, content_type: str, *, duration: int, connections: int, workdir: Path
) -> LoadResult:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BODY": str(body), "CONTENT_TYPE": content_type}
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=duration + 60
    ).stdout

    def latency_ms(percentile: str) -> float:
        value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(map(int, socket_errors.groups())) if socket_errors else 0
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return LoadResult(count, rate, latency_ms("50"), latency_ms("99"), errors)


def batch_counts(url: str) -> tuple[float, float]:
    """(model runs, digits run) so far, summed over workers, from the service's histogram."""
    text = httpx.get(f"{url}/metrics").text

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("mnist_model_batch_rows_count"), value("mnist_model_batch_rows_sum")


def time_big_request(url: str, body: bytes, repeats: int = 5) -> tuple[float, int]:
    """Median seconds for one POST of `body` (connection kept warm), and its status."""
    times, status = [], 0
    with httpx.Client(timeout=60) as client:
        client.post(f"{url}/model_info", json={})  # open the connection first
        for _ in range(repeats):
            start = time.perf_counter()
            response = client.post(
                f"{url}/predict", content=body, headers={"Content-Type": "application/json"}
            )
            times.append(time.perf_counter() - start)
            status = response.status_code
    return statistics.median(times), status


def model_to_serve(env: dict, workdir: Path, model_tag: str | None = None) -> tuple[str, Path]:
    """(tag, ONNX file) of the model to serve: ``model_tag``, else the one `make run`
    packaged last, else a stand-in trained now into a store of its own in ``workdir``
    (whose BENTOML_HOME ``env`` then names). The store is read in a subprocess: BentoML
    fixes its home when first imported."""
    probe = (
        "import sys, bentoml\n"
        "from serving.contract import MODEL_FILE, MODEL_NAME\n"
        "try:\n"
        "    m = bentoml.models.get(sys.argv[1])\n"
        "except bentoml.exceptions.NotFound:\n"
        "    sys.exit(3)\n"
        "print(m.tag, m.path_of(MODEL_FILE))\n"
    )
    from serving.contract import MODEL_NAME

    found = subprocess.run(
        [sys.executable, "-c", probe, model_tag or f"{MODEL_NAME}:latest"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if found.returncode == 0:
        tag, path = found.stdout.split()
        return tag, Path(path)
    if model_tag:
        sys.exit(f"model {model_tag} is not in the BentoML store:\n{found.stderr[-2000:]}")
    env["BENTOML_HOME"] = str(workdir / "bentoml")  # no `make run` yet: the stand-in
    subprocess.run(
        [sys.executable, "-m", "harness.fixture_model"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return model_to_serve(env, workdir, f"{MODEL_NAME}:latest")


def png_of(digit: np.ndarray, size: int = 200) -> bytes:
    """A real digit as a person might draw it: size x size PNG, dark ink on white."""
    ink = Image.fromarray(digit).resize((size // 2, size // 2), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(ink, (size // 4, size // 4))
    buffer = io.BytesIO()
    Image.fromarray(255 - np.asarray(canvas)).save(buffer, format="PNG")
    return buffer.getvalue()


SECTION = "Serving"
JSON = "application/json"
SERVED_LOG_ROUNDS = 3


@contextmanager
def plain_endpoint(onnx_path: Path, log_path: Path) -> Iterator[Server]:
    """bench/fastapi_baseline.py under uvicorn, 2 workers on 127.0.0.1, serving onnx_path;
    yields it as a Server (URL and pid) and stops its process group whatever happens."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.fastapi_baseline:app",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    env = {**os.environ, "MNIST_ONNX": str(onnx_path)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        body = {"images_b64": base64.b64encode(bytes(784)).decode()}
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.post(f"{url}/predict", json=body, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the plain endpoint did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield Server(url, process.pid)
    finally:
        stop(process)


def int8_speed(
    report: Report, onnx_path: Path, digits: np.ndarray, labels: np.ndarray, workdir: Path
) -> None:
    """The served ONNX file against its int8 quantization, as `promote.quantize: int8`
    would package it: ONNX Runtime alone, 10,000 digits in runs of 2,048 on 1 thread (a
    worker's share of a big request), best of 5; and their agreement."""
    from pipeline import export
    from pipeline.errors import StageError
    from serving.runner import make_session

    calibration, _ = load_mnist("train", 1024)
    float_bytes = onnx_path.read_bytes()
    int8_bytes = export.quantize_int8(float_bytes, to_pixels(calibration))
    pixels = to_pixels(digits)
    timings = {}
    for name, data in (("float32", float_bytes), ("int8", int8_bytes)):
        path = workdir / f"{name}.onnx"
        path.write_bytes(data)
        session = make_session(path)
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            for i in range(0, len(pixels), 2048):
                session.run(None, {session.get_inputs()[0].name: pixels[i : i + 2048]})
            seconds.append(time.perf_counter() - started)
        timings[name] = min(seconds)
    try:
        check = export.check_quantized(int8_bytes, float_bytes, pixels, labels)
        verdict = f"{check['label_agreement']:.2%} / {-check['accuracy_loss']:+.2%}"
    except StageError as refused:  # the figures are in its message; package would stop
        verdict = f"refused: {refused}"
    section = f"{SECTION}: int8 (`promote.quantize`)"
    report.row(
        section,
        "10,000 digits, ONNX Runtime alone, 1 thread: float32",
        f"{timings['float32']:.3f} s",
    )
    report.row(
        section,
        "... int8 (static QDQ, per-channel, calibrated on 1,024 training images)",
        f"{timings['int8']:.3f} s ({timings['float32'] / timings['int8']:.2f}x)",
    )
    report.row(
        section,
        "int8 labels equal to float32's / accuracy change, on 10,000 test digits",
        verdict,
        "≥ 99.9 % / ≥ -0.05 %",
    )


def served_log_cpu_per_answer(digit: np.ndarray, folder: Path, answers: int = 20_000) -> float:
    """CPU microseconds the served-input log spends an answer of one digit: ``answers``
    recorded on an event loop as the service records them (kept, written 64 at a time),
    minus the same loop copying the arrays without recording them; the file opened (and
    BentoML imported, as in a worker) before the clock starts."""
    import asyncio
    import gc

    from serving.served_log import ServedLog

    pixels = to_pixels(digit)  # (1, 1, 28, 28)
    probabilities = np.full((1, 10), 0.1, np.float32)

    async def loop(record) -> float:
        started = time.process_time()
        for i in range(answers):
            record(pixels.copy(), probabilities.copy())
            if i % 16 == 0:
                await asyncio.sleep(0)  # the event loop runs, as between requests
        return time.process_time() - started

    # The service freezes what it loaded (gc.freeze in its __init__), so that collections
    # skip it; this process holds the benchmark's data, which would make each collection
    # the record's allocations trigger cost far more here than in a worker.
    gc.collect()
    gc.freeze()
    try:
        log = ServedLog("mnist-classifier:bench", folder, max_bytes=2**30)
        log.record("/predict", pixels, probabilities)  # outside a loop: opened, written now
        recorded = asyncio.run(loop(lambda p, q: log.record("/predict", p, q)))
        started = time.process_time()
        log.close()  # what it still kept, written
        recorded += time.process_time() - started
        copied = asyncio.run(loop(lambda p, q: None))
    finally:
        gc.unfreeze()
    return (recorded - copied) / answers * 1e6


def to_pixels(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1], the ONNX file's input."""
    return (images.astype(np.float32) / np.float32(255))[:, None]


def run_all(
    report: Report,
    model_tag: str | None = None,
    duration: int = 10,
    concurrency: int = 32,
    tiny: bool = False,
) -> None:
    """Every serving figure; ``tiny``: only the default server's rows (no yardstick, no
    variants, no int8), for a check that the benchmark still runs."""
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install -y wrk")
    workdir = Path(tempfile.mkdtemp(prefix="serving_bench_"))
    env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "MNIST_SERVED_LOG_DIR": str(workdir / "served_log"),
    }
    tag, onnx_path = model_to_serve(env, workdir, model_tag)
    env["MNIST_MODEL_TAG"] = tag

    digits, labels = load_mnist("t10k")  # (10000, 28, 28) uint8
    bodies = {
        "list": json.dumps({"images": digits[:1].tolist()}).encode(),
        "b64": json.dumps({"images_b64": base64.b64encode(digits[:1].tobytes()).decode()}).encode(),
        "10k_b64": json.dumps({"images_b64": base64.b64encode(digits.tobytes()).decode()}).encode(),
        "10k_list": json.dumps(
            {"images": digits.reshape(-1, 784).tolist()}, separators=(",", ":")
        ).encode(),
    }
    for name, body in bodies.items():
        (workdir / f"{name}.json").write_bytes(body)
    (workdir / "digit.png").write_bytes(png_of(digits[0]))
    load_section = f"{SECTION}: {concurrency} connections, {duration} s a run"
    report.table(
        load_section,
        "what",
        "req/s",
        "p50",
        "p99",
        "server CPU a request",
        "digits a model run",
        "errors",
        "target",
    )

    def measure(server: Server, route: str, body: Path, content_type: str):
        """One wrk run: its result, the server's CPU ms a request, digits a model run."""
        runs_before, rows_before = batch_counts(server.url)
        cpu_before = server.cpu_seconds()
        result = wrk(
            f"{server.url}{route}",
            body,
            content_type,
            duration=duration,
            connections=concurrency,
            workdir=workdir,
        )
        cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / max(result.requests, 1)
        runs_after, rows_after = batch_counts(server.url)
        runs, rows = runs_after - runs_before, rows_after - rows_before
        return result, cpu_ms, (f"{rows / runs:.1f}" if runs else "(not counted)")

    def load(
        label: str, server: Server, route: str, body: Path, content_type: str, target: str
    ) -> None:
        result, cpu_ms, per_run = measure(server, route, body, content_type)
        report.add(
            load_section,
            label,
            f"{result.requests_per_s:,.0f}",
            f"{result.p50_ms:.1f} ms",
            f"{result.p99_ms:.1f} ms",
            f"{cpu_ms:.2f} ms",
            per_run,
            str(result.errors),
            target,
        )

    def served_log_cost() -> None:
        """The record of served digits (on by default) against a server with it off: two
        fresh servers, single-digit b64 requests, runs alternating ABBA (on, off; off, on;
        ...) so a drift of the machine favours neither; then the 10,000-digit request on
        each; then the record's own CPU an answer, in this process, against the off
        server's CPU a request: the share of a request it costs, steadier than req/s."""
        runs: dict[str, list] = {"on": [], "off": []}
        on_env = {**env, "MNIST_SERVED_LOG_DIR": str(workdir / "served_log_fresh")}
        with (
            serve(on_env, workdir / "serve_on.log") as on,
            serve({**env, "MNIST_SERVED_LOG": "0"}, workdir / "serve_off.log") as off,
        ):
            for round_ in range(SERVED_LOG_ROUNDS):
                pair = [("on", on), ("off", off)]
                for name, target in pair if round_ % 2 == 0 else pair[::-1]:
                    runs[name].append(measure(target, "/predict", workdir / "b64.json", JSON))
            bulk = {
                name: time_big_request(target.url, bodies["10k_b64"])[0]
                for name, target in (("on", on), ("off", off))
            }
        rate = {name: statistics.median(r[0].requests_per_s for r in runs[name]) for name in runs}
        cpu = {name: statistics.median(r[1] for r in runs[name]) for name in runs}
        spread = {  # (fastest - slowest) / median: how far req/s can resolve a difference
            name: (max(r[0].requests_per_s for r in runs[name])
                   - min(r[0].requests_per_s for r in runs[name])) / rate[name]
            for name in runs
        }  # fmt: skip
        report.row(
            SECTION,
            f"served-input log (serving/served_log.py): `/predict`, 1 digit, b64 body, on / off "
            f"(median of {SERVED_LOG_ROUNDS} runs each, alternating ABBA, two fresh servers): "
            "req/s; server CPU a request",
            f"{rate['on']:,.0f} / {rate['off']:,.0f} req/s ({rate['on'] / rate['off'] - 1:+.1%}; "
            f"the off server's own runs spread {spread['off']:.0%}); "
            f"{cpu['on']:.3f} / {cpu['off']:.3f} ms ({cpu['on'] / cpu['off'] - 1:+.1%})",
            "costs ≤ 5 % of throughput",
        )
        per_answer_us = served_log_cpu_per_answer(digits[:1], workdir / "served_log_cpu")
        report.row(
            SECTION,
            "served-input log: its own CPU an answer (20,000 single-digit answers recorded and "
            "written in this process, the arrays' copies discounted), and that as a share of "
            "the off server's CPU a request above",
            f"{per_answer_us:.1f} us; {per_answer_us / 1000 / cpu['off']:.1%}",
            "≤ 5 %",
        )
        report.row(
            SECTION,
            "served-input log: `/predict`, 10,000 digits in one request, b64 body, on / off "
            "(median of 5 each)",
            f"{bulk['on']:.3f} / {bulk['off']:.3f} s ({bulk['on'] / bulk['off'] - 1:+.0%})",
            "",
        )

    with serve(env, workdir / "serve.log") as server:
        url = server.url
        candidate = httpx.post(f"{url}/model_info", json={}).json().get("candidate", "?")
        report.note(load_section, f"Model `{tag}` ({candidate}), 2 workers unless stated.")
        for name in ("list", "b64"):
            load(
                f"`/predict`, 1 digit, {name} body ({len(bodies[name])} B)",
                server,
                "/predict",
                workdir / f"{name}.json",
                "application/json",
                "≥ 1,000 req/s, p99 ≤ 100 ms",
            )
        with (
            contextlib.nullcontext() if tiny else plain_endpoint(onnx_path, workdir / "plain.log")
        ) as plain:
            if plain:
                load(
                    "the yardstick: FastAPI + ONNX Runtime, 2 uvicorn workers, the same ONNX "
                    "file, b64 body (bench/fastapi_baseline.py)",
                    plain,
                    "/predict",
                    workdir / "b64.json",
                    "application/json",
                    "the Bento's b64 row ≥ this",
                )
        for name in ("10k_b64", "10k_list"):
            seconds, status = time_big_request(url, bodies[name])
            report.row(
                SECTION,
                f"`/predict`, 10,000 digits in one request, {name[4:]} body "
                f"({len(bodies[name]) / 2**20:.1f} MiB, HTTP {status}, median of 5)",
                f"{seconds:.3f} s",
                "≤ 0.5 s" if name == "10k_b64" else "",
            )
        load(
            "`/predict_image`, 200x200 PNG",
            server,
            "/predict_image",
            workdir / "digit.png",
            "image/png",
            "≥ 300 req/s",
        )
    if not tiny:
        served_log_cost()
    variants = {
        "batching off": {"MNIST_MAX_BATCH": "1"},
        "access log on": {"MNIST_ACCESS_LOG": "1"},
        "1 worker, 2 ONNX Runtime threads": {"MNIST_WORKERS": "1", "MNIST_ORT_THREADS": "2"},
    }
    for name, overrides in {} if tiny else variants.items():
        with serve({**env, **overrides}, workdir / "serve_variant.log") as variant:
            load(
                f"`/predict`, 1 digit, b64 body, {name}",
                variant,
                "/predict",
                workdir / "b64.json",
                "application/json",
                "against the default above",
            )
    if not tiny:
        int8_speed(report, onnx_path, digits, labels, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-tag", help="a model already in the store BENTOML_HOME points at")
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    report = Report("Serving speed")
    run_all(report, args.model_tag, args.duration, args.concurrency)
    print(report.markdown())


if __name__ == "__main__":
    main()
