"""package: the champion to ONNX, checked, stored in BentoML and built into a Bento.

In: ``decision.json`` from promote (which registry version is ``champion``); the
champion's run artifacts in MLflow (weights, candidate settings, normalisation stats);
``test.npz`` from split. Out, in ``--out``: ``model.onnx`` (pixels in [0, 1]
(N, 1, 28, 28) -> probabilities (N, 10), standardisation and TTA inside the graph),
``model_card.md``, ``bentofile.yaml`` and ``bento.json`` (the BentoML model and Bento
tags). The stage stops, before storing anything, if ONNX Runtime and torch disagree on
any of the test images (argmax) or by 1e-5 or more in any probability.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline import atomic, cli, export, inference, registry, tracking
from pipeline.errors import StageError
from pipeline.params import (
    Candidate,
    MlflowParams,
    PromoteParams,
    candidate_from_logged,
    load_section,
)
from serving.contract import store_model

BENTOFILE = Path(__file__).resolve().parents[2] / "serving" / "bentofile.yaml"


def champion_files(run_id: str, folder: Path) -> tuple[Candidate, dict, Path]:
    """Download the champion's weights and settings from its MLflow run."""
    import mlflow

    train_dir = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="train", dst_path=str(folder)
        )
    )
    candidate = candidate_from_logged(json.loads((train_dir / "candidate.json").read_text()))
    return (
        candidate,
        json.loads((train_dir / "stats.json").read_text()),
        train_dir / "weights.safetensors",
    )


def model_card(info: dict, check: dict) -> str:
    m = info["metrics"]
    return f"""# MNIST digit classifier: {info["candidate"]}

Registry: `{info["registry_model"]}` version {info["registry_version"]} (alias `{info["alias"]}`),
MLflow run `{info["run_id"]}`, git commit `{info["git_commit"]}`.

**What it does.** Classifies a 28x28 greyscale handwritten digit (0-9). `predict` takes
batches of MNIST-style arrays; `predict_image` takes a PNG/JPEG and preprocesses it the
MNIST way (grey, ink light on dark, cropped, scaled into 20x20, centred by mass).

**Trained on.** MNIST: {info["n_train"]} training images (official 60,000 minus a
stratified 10,000-image validation split). Selected by validation accuracy only.

**Metrics.** Validation accuracy {m["val_accuracy"]:.4f}; test accuracy
{m["test_accuracy"]:.4f} on the official 10,000 test images (read once, by evaluate).
ONNX Runtime agrees with torch on all {check["images"]} test images (max probability
difference {check["max_probability_diff"]:.1e}).

**Limits.** Trained only on centred, size-normalised digits from American writers in the
1990s: other scripts, letters, several digits in one image, or photos with clutter are
out of scope and still get a confident-looking answer. Probabilities are not calibrated.
"""


def build_bento(model_tag: str, card: Path, out: Path) -> str:
    """``bentoml build`` with the model card as description; returns the Bento tag."""
    context = BENTOFILE.parent.parent  # the repository root: paths in the bentofile start here
    config = yaml.safe_load(BENTOFILE.read_text())
    config["description"] = f"file: ./{os.path.relpath(card.resolve(), context)}"
    bentofile = out / "bentofile.yaml"
    atomic.write_text(bentofile, yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "build",
            "-f",
            str(bentofile),
            "--output",
            "tag",
            str(context),
        ],
        env={**os.environ, "MNIST_MODEL_TAG": model_tag},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StageError(f"bentoml build failed:\n{result.stdout}\n{result.stderr}")
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag


def main(args) -> None:
    promote_params = load_section(args.params, "promote", PromoteParams)
    tracking.setup(load_section(args.params, "mlflow", MlflowParams))
    name = promote_params.registered_model
    version = registry.current_champion(name)
    if version is None:
        raise StageError(f"{name} has no {registry.ALIAS} alias yet: run the promote stage")
    decided = str(atomic.read_json(args.decision)["champion_version"])
    if str(version.version) != decided:  # the alias is the truth: serving follows it
        print(
            f"package: the champion alias is on version {version.version}, not on promote's "
            f"version {decided} (moved since, e.g. by --rollback): packaging "
            f"version {version.version}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        candidate, stats, weights = champion_files(version.run_id, Path(tmp))
        predictor = inference.load_predictor(candidate, weights, stats)
    onnx_bytes = export.export_onnx(predictor)
    pixels = inference.to_pixels(atomic.read_npz(args.test)["images"])
    check = export.check_onnx(onnx_bytes, predictor, pixels)
    run = registry.client().get_run(version.run_id)
    info = {
        "registry_model": name,
        "registry_version": str(version.version),
        "alias": registry.ALIAS,
        "candidate": version.tags.get("candidate", "?"),
        "run_id": version.run_id,
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "n_train": int(run.data.params.get("n_train", 0)),
        "metrics": {
            "val_accuracy": float(version.tags["val_accuracy"]),
            "test_accuracy": float(version.tags["test_accuracy"]),
        },
        "normalisation": stats,
    }
    out: Path = args.out
    atomic.write_bytes(out / "model.onnx", onnx_bytes)
    atomic.write_text(out / "model_card.md", model_card(info, check))
    model_ref = store_model(
        onnx_bytes,
        info,
        labels={"candidate": info["candidate"], "registry_version": info["registry_version"]},
    )
    bento_tag = build_bento(str(model_ref.tag), out / "model_card.md", out)
    atomic.write_json(
        out / "bento.json",
        {
            "bento": bento_tag,
            "model": str(model_ref.tag),
            "registry_version": info["registry_version"],
            "candidate": info["candidate"],
            "onnx_check": check,
        },
    )
    print(
        f"package: {name} v{version.version} ({info['candidate']}) -> model {model_ref.tag}, "
        f"bento {bento_tag}; ONNX == torch on {check['images']} test images "
        f"(max diff {check['max_probability_diff']:.1e})"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("package", __doc__)
    p.add_argument("--decision", required=True, type=Path, help="decision.json from promote")
    p.add_argument("--test", required=True, type=Path, help="test.npz from split")
    p.add_argument("--out", required=True, type=Path, help="folder for ONNX, card and tags")
    cli.run("package", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
