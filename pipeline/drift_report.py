"""The drift stage's report: JSON for machines, markdown with two pictures for people, and
Prometheus metrics for the textfile collector.

In: the stage's result (a dict: the window, the verdict, each test; see
pipeline/stages/drift.py) and, when there was a comparison, the reference and window
digits. Out, in a folder: ``drift.json``, ``report.md``, ``outputs.png``, ``inputs.png``
(a blank note when there was nothing to compare) and ``drift.prom``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.drift import Comparison


def write(out: Path, result: dict, digits: tuple | None, comparison: Comparison | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if comparison is None:
        note(out / "outputs.png", result["reason"])
        note(out / "inputs.png", result["reason"])
    else:
        outputs_picture(out / "outputs.png", comparison)
        inputs_picture(out / "inputs.png", *digits)
    atomic.write_json(out / "drift.json", result)
    atomic.write_text(out / "report.md", markdown(result, comparison))
    atomic.write_text(out / "drift.prom", prometheus(result, comparison))


def markdown(result: dict, comparison: Comparison | None) -> str:
    head = [
        "# Drift: served digits against the validation split",
        "",
        f"- model: `{result['model']}`",
        f"- served-input log: `{result['served_log']}` ({result['logged_digits']:,} digits)",
    ]
    if comparison is None:
        return "\n".join([*head, "", f"**No verdict**: {result['reason']}.", ""])
    verdict = "**Drift**" if comparison.drift else "**No drift**"
    rows = [
        f"- window: the latest {result['window_digits']:,} digits, {result['window_from']} "
        f"to {result['window_to']}",
        f"- reference: {comparison.reference_digits:,} validation digits, scored by the same model",
        "",
        f"{verdict} at alpha = {comparison.alpha} (drift when either test rejects).",
        "",
        "| test | statistic | p-value | drift |",
        "|---|---|---|---|",
    ]
    for test in (comparison.outputs, comparison.inputs):
        rows.append(
            f"| {test.name} | {test.statistic:.4g} | {test.p_value:.3g} | "
            f"{'yes' if test.drift else 'no'} |"
        )
    rows += [
        "",
        "## Outputs: each digit's probability",
        "",
        "![each digit's mean probability, reference beside window](outputs.png)",
        "",
        "| digit | mean probability, reference | window | KS statistic | p-value |",
        "|---|---|---|---|---|",
    ]
    for row in comparison.outputs_per_class:
        rows.append(
            f"| {row['digit']} | {row['reference_mean']:.3f} | {row['window_mean']:.3f} | "
            f"{row['statistic']:.3f} | {row['p_value']:.3g} |"
        )
    rows += [
        "",
        "## Inputs: the pixels",
        "",
        "![mean digit of each set, their difference, and both on two principal components]"
        "(inputs.png)",
        "",
    ]
    return "\n".join([*head, *rows])


def prometheus(result: dict, comparison: Comparison | None) -> str:
    """node_exporter textfile format: the verdict (absent without one) and the p-values."""
    lines = [
        "# HELP mnist_drift_window_digits Served digits in the drift check's window",
        "# TYPE mnist_drift_window_digits gauge",
        f"mnist_drift_window_digits {result['window_digits']}",
    ]
    if comparison is not None:
        lines += [
            "# HELP mnist_drift_detected 1 when the latest drift check found drift, else 0",
            "# TYPE mnist_drift_detected gauge",
            f"mnist_drift_detected {int(comparison.drift)}",
            "# HELP mnist_drift_p_value The latest drift check's p-value, by test",
            "# TYPE mnist_drift_p_value gauge",
            f'mnist_drift_p_value{{test="outputs"}} {comparison.outputs.p_value:.6g}',
            f'mnist_drift_p_value{{test="inputs"}} {comparison.inputs.p_value:.6g}',
        ]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib, imported only for a comparison: a run with no verdict stays quick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def note(path: Path, text: str) -> None:
    """A picture that says there is nothing to draw (Pillow's default font)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (8 * len(text) + 120, 30), "white")
    ImageDraw.Draw(image).text((10, 8), f"No verdict: {text}", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())


def outputs_picture(path: Path, comparison: Comparison) -> None:
    """Mean probability per digit, reference beside window."""
    rows = comparison.outputs_per_class
    digits = np.arange(len(rows))
    fig, ax = pyplot().subplots(figsize=(8, 3))
    ax.bar(digits - 0.2, [r["reference_mean"] for r in rows], 0.4, label="reference (validation)")
    ax.bar(digits + 0.2, [r["window_mean"] for r in rows], 0.4, label="window (served)")
    ax.set_xticks(digits)
    ax.set_xlabel("digit")
    ax.set_ylabel("mean probability")
    ax.set_title(f"Outputs: p = {comparison.outputs.p_value:.3g} (KS per class, Bonferroni)")
    ax.legend()
    _save(fig, path)


def inputs_picture(path: Path, reference: np.ndarray, window: np.ndarray) -> None:
    """Each set's mean digit, window minus reference, and a scatter on two principal
    components of the reference."""
    from pipeline.drift import project

    mean_reference = reference.mean(axis=0) / 255
    mean_window = window.mean(axis=0) / 255
    x, y = project(reference, window, 2, 0)
    fig, axes = pyplot().subplots(1, 4, figsize=(13, 3))
    for ax, image, title in zip(
        axes[:2], (mean_reference, mean_window), ("reference mean", "window mean"), strict=True
    ):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    difference = mean_window - mean_reference
    limit = max(float(np.abs(difference).max()), 1e-6)
    axes[2].imshow(difference, cmap="coolwarm", vmin=-limit, vmax=limit)
    axes[2].set_title("window - reference")
    axes[2].axis("off")
    axes[3].scatter(x[:, 0], x[:, 1], s=3, alpha=0.4, label="reference")
    axes[3].scatter(y[:, 0], y[:, 1], s=3, alpha=0.4, label="window")
    axes[3].set_title("first two principal components")
    axes[3].legend(markerscale=4)
    _save(fig, path)
