"""drift: do the digits the service answered still look like the ones it was made for?

In: ``--served``, a folder of the service's served-input log (serving/served_log.py; by
default the ``served_log/`` a `bentoml serve` started in the project writes; a team
copies its pods' record there, or points ``--served`` at it); the packaged champion
(``model.onnx`` and ``bento.json`` from package); ``val.npz`` from split. The ``drift``
params: how many of the latest served digits make the window, how few are too few, the
reference's size, the test level, the principal components and the seed.

Out, in ``--out``: ``drift.json`` (the verdict and each test's statistic and p-value,
for machines), ``report.md`` with ``outputs.png`` and ``inputs.png`` (for people), and
``drift.prom``, the verdict as Prometheus metrics (``mnist_drift_detected`` and the
p-values) for node_exporter's textfile collector, which the alert MnistDriftDetected
(deploy/prometheus/alerts.yml) reads.

The window is the latest ``drift.window`` digits that the packaged model answered (lines
of other models are counted and left out: their probabilities are another model's). The
reference is a stratified sample of the validation split scored by the same ONNX file.
Fewer than ``drift.min_digits`` in the window, or no log at all, is no verdict
(``"drift": null``), not an error: the stage runs in every `dvc repro`. With
``--fail-on-drift`` the command exits 3 when it finds drift, for a scheduler to notice
(docs/drift.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, dataset, drift, drift_report
from pipeline.errors import StageError
from pipeline.params import DriftParams, load_section
from serving import served_log
from serving.contract import INPUT_NAME, OUTPUT_NAME, PIXEL_LEVELS

DRIFT_EXIT = 3


def score(model: Path, digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 10) probabilities from the packaged ONNX file."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pixels = digits.astype(np.float32)[:, None] / np.float32(PIXEL_LEVELS)  # (N, 1, 28, 28)
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


def served_window(folder: Path, model: str, size: int):
    """The latest ``size`` digits that ``model`` answered, and the log's digits in all."""
    if not folder.is_dir():
        return None, 0
    try:
        answers = served_log.read(folder)
    except (ValueError, KeyError) as error:
        raise StageError(f"{folder}: not a served-input log: {error}") from None
    ours = answers[answers["model"] == model].sort_values("time", kind="stable")
    return ours.tail(size), len(answers)


def main(args) -> None:
    params = load_section(args.params, "drift", DriftParams)
    packaged = atomic.read_json(args.bento)
    model = packaged["model"]
    window, logged = served_window(args.served, model, params.window)
    summary = {
        "model": model,
        "served_log": str(args.served),
        "logged_digits": logged,
        "window_digits": 0 if window is None else len(window),
        "min_digits": params.min_digits,
    }
    if window is None or len(window) < params.min_digits:
        result = summary | {"drift": None, "reason": too_few(window, logged, params, model)}
        drift_report.write(args.out, result, None, None)
        print(f"drift: no verdict: {result['reason']}")
        return
    times = window["time"]
    summary |= {"window_from": str(times.iloc[0]), "window_to": str(times.iloc[-1])}
    split = atomic.read_npz(args.val)
    reference, _ = dataset.stratified_take(
        split["images"], split["labels"], params.reference_digits, params.seed
    )
    pixels = served_log.pixels_of(window)  # (N, 28, 28) uint8
    comparison = drift.compare(
        reference,
        score(args.model, reference),
        pixels,
        served_log.probabilities_of(window),
        alpha=params.alpha,
        components=params.components,
        seed=params.seed,
    )
    result = summary | comparison.as_dict()
    drift_report.write(args.out, result, (reference, pixels), comparison)
    verdict = "DRIFT" if comparison.drift else "no drift"
    outputs, inputs = comparison.outputs.p_value, comparison.inputs.p_value
    p_values = f"outputs p={outputs:.3g}, inputs p={inputs:.3g}"
    print(
        f"drift: {verdict} in the latest {len(pixels)} digits ({p_values}, alpha "
        f"{params.alpha}): {args.out / 'report.md'}"
    )
    if comparison.drift and args.fail_on_drift:
        sys.exit(DRIFT_EXIT)


def too_few(window, logged: int, params: DriftParams, model: str) -> str:
    if window is None or not logged:
        return "no digits in the served-input log yet (serve the model, or copy its log here)"
    if not len(window):
        return (
            f"none of the {logged} logged digits was answered by the packaged model {model}; "
            "serve it, or compare against the model that answered"
        )
    return (
        f"{len(window)} digits answered by {model}: fewer than drift.min_digits "
        f"({params.min_digits})"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("drift", __doc__)
    p.add_argument("--served", required=True, type=Path, help="the served-input log's folder")
    p.add_argument("--model", required=True, type=Path, help="the packaged model.onnx")
    p.add_argument("--bento", required=True, type=Path, help="package's bento.json")
    p.add_argument("--val", required=True, type=Path, help="val.npz from split")
    p.add_argument("--out", required=True, type=Path, help="folder for the report")
    p.add_argument(
        "--fail-on-drift",
        action="store_true",
        help=f"exit {DRIFT_EXIT} when drift is found (for a scheduler)",
    )
    cli.run("drift", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
