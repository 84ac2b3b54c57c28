"""Digits as people send them: the served model's accuracy per kind of corruption before
and after the service looked for the digit on the page, and /predict_image's speed on a
phone photo.

Measures:
- accuracy per kind (pipeline/photos.py: lighting, ruled and squared paper, noise, blur,
  rotation, scale, placement, JPEG, and all of it in a phone photo) on --per-kind
  official test digits (params.yaml's robustness seed), the model run with ONNX Runtime
  on what each preprocessing made of the images: the service's preprocessing before the
  digit finder (``legacy_digit_from_image`` below, kept here only for this comparison)
  and serving/preprocess.py now; and on the same digits as plain arrays;
- /predict_image under wrk with a 640x480 JPEG phone photo of a digit on lined paper, sent
  as the raw body and as a multipart/form-data upload: req/s, p50, p99 and server CPU a
  request (target: at least 300 req/s on 2 cores).

In: the model to serve, as bench/serving_bench.py chooses it (--model-tag; else the
champion `make run` packaged; else the stand-in of harness/fixture_model.py in a
temporary store); the MNIST mirror; wrk (`apt-get install -y wrk`). Out: tables on stdout.
Loopback only; every load run is bounded.

    python -m bench.robustness_bench [--model-tag TAG] [--per-kind 500] [--duration 10]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.serving_bench import Server, model_to_serve, serve, wrk
from harness.mnist import load_mnist
from harness.report import ROOT, Report
from pipeline import photos
from pipeline.params import RobustnessParams, load_section
from serving import preprocess
from serving.contract import IMAGE_SIDE, INPUT_NAME, OUTPUT_NAME

ACCURACY = "Robustness: accuracy per kind of corruption"
SPEED = "Serving photos"
BOUNDARY = "bench-boundary"


# ----- the preprocessing before the digit finder, for the comparison ----------------------


def legacy_digit_from_image(data: bytes) -> np.ndarray:
    """What /predict_image did before it looked for the digit on the page: grey, inverted
    if the border is light, every mark above 10 % of the strongest ink cropped together,
    scaled into 20x20 and centred by mass at (13.5, 13.5). BadInput as the service had it."""
    field = "image"
    if not data or len(data) > preprocess.MAX_IMAGE_BYTES:
        raise preprocess.BadInput(f"{field} is empty or too large", field=field)
    try:
        image = Image.open(io.BytesIO(data), formats=preprocess.IMAGE_FORMATS)
        if image.width * image.height > preprocess.MAX_IMAGE_PIXELS:
            raise ValueError("too large")
        if image.format == "JPEG":
            image.draft("L", (4 * IMAGE_SIDE, 4 * IMAGE_SIDE))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            background = Image.new("RGBA", image.size, "white")
            image = Image.alpha_composite(background, image.convert("RGBA"))
        pixels = np.asarray(image.convert("L")).astype(np.float32)
    except Exception:
        raise preprocess.BadInput(f"{field} is not a usable PNG or JPEG", field=field) from None
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    if background > 127:
        pixels, background = 255 - pixels, 255 - background
    ink = np.maximum(pixels - background, 0)
    peak = float(ink.max())
    if peak < 40:
        raise preprocess.BadInput(f"{field} looks blank", field=field)
    ink[ink < 0.1 * peak] = 0
    ink *= 255 / peak
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = preprocess.DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    box = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS))
    weights = box.astype(np.float64)
    total = weights.sum() or 1.0
    centre_row = (weights.sum(axis=1) * np.arange(box.shape[0])).sum() / total
    centre_col = (weights.sum(axis=0) * np.arange(box.shape[1])).sum() / total
    top = int(np.clip(round(13.5 - centre_row), 0, IMAGE_SIDE - box.shape[0]))
    left = int(np.clip(round(13.5 - centre_col), 0, IMAGE_SIDE - box.shape[1]))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    return out


# ----- accuracy ---------------------------------------------------------------------------


def seen_by(preprocessor, images: list[bytes]) -> tuple[np.ndarray, int]:
    """((N, 28, 28) what ``preprocessor`` made of each image, zeros if refused; refused)."""
    out = np.zeros((len(images), IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    refused = 0
    for i, data in enumerate(images):
        try:
            out[i] = preprocessor(data)
        except preprocess.BadInput:
            refused += 1
    return out, refused


def accuracy(session, digits: np.ndarray, labels: np.ndarray) -> float:
    pixels = (digits.astype(np.float32) / np.float32(255))[:, None]  # (N, 1, 28, 28)
    probabilities = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    return float((probabilities.argmax(axis=1) == labels).mean())


def accuracy_before_and_after(report: Report, onnx_path: Path, tag: str, per_kind: int) -> None:
    from serving.runner import make_session

    session = make_session(onnx_path)
    params = load_section(ROOT / "params.yaml", "robustness", RobustnessParams)
    test_images, test_labels = load_mnist("t10k")
    index = np.sort(
        np.random.default_rng(params.seed).choice(len(test_labels), per_kind, replace=False)
    )
    digits, labels = test_images[index], test_labels[index]
    report.table(ACCURACY, "kind", "before (legacy preprocessing)", "after", "refused before/after")
    report.note(
        ACCURACY,
        f"Model `{tag}`, ONNX Runtime; {per_kind} official test digits, the same under every "
        "kind (docs/robustness.md). A refused image counts as wrong. As plain arrays: "
        f"{accuracy(session, digits, labels):.4f}.",
    )
    for kind in params.kinds:
        images = photos.render(kind, digits, params.seed)
        before, refused_before = seen_by(legacy_digit_from_image, images)
        after, refused_after = seen_by(preprocess.digit_from_image, images)
        report.add(
            ACCURACY,
            kind,
            f"{accuracy(session, before, labels):.4f}",
            f"{accuracy(session, after, labels):.4f}",
            f"{refused_before}/{refused_after}",
        )


# ----- speed ------------------------------------------------------------------------------


def multipart(data: bytes, filename: str, media_type: str) -> bytes:
    """A multipart/form-data body of one file part named ``image``, as curl -F sends it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{filename}"\r\nContent-Type: {media_type}\r\n\r\n'
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def photo_load(
    report: Report, env: dict[str, str], workdir: Path, duration: int, connections: int
) -> None:
    digit, _ = load_mnist("t10k", 1)
    photo = photos.photo(digit[0], np.random.default_rng(0))  # 640x480 JPEG, lined paper
    bodies = {
        "raw body": (photo, "image/jpeg"),
        "multipart/form-data": (
            multipart(photo, "photo.jpg", "image/jpeg"),
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
    }
    report.table(
        SPEED,
        "what",
        "req/s",
        "p50",
        "p99",
        "server CPU a request",
        "errors",
        "target",
    )
    report.note(
        SPEED,
        f"{connections} connections, {duration} s a run, 2 workers; a {len(photo) // 1024} KiB "
        "640x480 JPEG phone photo of a digit on lined paper (pipeline/photos.py).",
    )
    with serve(env, workdir / "serve_photos.log") as server:
        warm_up = workdir / "warm_up.jpg"
        warm_up.write_bytes(photo)  # the workers' first requests are slower: not counted
        wrk(
            f"{server.url}/predict_image",
            warm_up,
            "image/jpeg",
            duration=2,
            connections=4,
            workdir=workdir,
        )
        for label, (body, content_type) in bodies.items():
            path = workdir / f"photo_{len(body)}.bin"
            path.write_bytes(body)
            load_row(report, server, path, content_type, label, duration, connections, workdir)


def load_row(
    report: Report,
    server: Server,
    body: Path,
    content_type: str,
    label: str,
    duration: int,
    connections: int,
    workdir: Path,
) -> None:
    cpu_before = server.cpu_seconds()
    result = wrk(
        f"{server.url}/predict_image",
        body,
        content_type,
        duration=duration,
        connections=connections,
        workdir=workdir,
    )
    cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / max(result.requests, 1)
    report.add(
        SPEED,
        f"`/predict_image`, 640x480 JPEG photo, {label}",
        f"{result.requests_per_s:,.0f}",
        f"{result.p50_ms:.1f} ms",
        f"{result.p99_ms:.1f} ms",
        f"{cpu_ms:.2f} ms",
        str(result.errors),
        "≥ 300 req/s",
    )


def run_all(
    report: Report,
    model_tag: str | None = None,
    per_kind: int = 500,
    duration: int = 10,
    concurrency: int = 32,
) -> None:
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install -y wrk")
    workdir = Path(tempfile.mkdtemp(prefix="robustness_bench_"))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    tag, onnx_path = model_to_serve(env, workdir, model_tag)
    env["MNIST_MODEL_TAG"] = tag
    accuracy_before_and_after(report, onnx_path, tag, per_kind)
    photo_load(report, env, workdir, duration, concurrency)
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.robustness_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-tag", help="a model already in the store BENTOML_HOME points at")
    parser.add_argument("--per-kind", type=int, default=500, help="test digits a kind")
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    report = Report("Robustness")
    run_all(report, args.model_tag, args.per_kind, args.duration, args.concurrency)
    print(report.markdown())


if __name__ == "__main__":
    main()
