"""package: the champion to ONNX, checked, stored in BentoML and built into a Bento.

In: ``decision.json`` from promote; the champion's run artifacts in MLflow (weights,
candidate settings, normalisation stats), fetched from the registry's ``champion``
alias (the truth, also after a rollback); ``test.npz`` from split; the champion's
robustness report from ``--robustness`` (for the card). Out, in ``--out``:
``model.onnx`` (pixels in [0, 1] (N, 1, 28, 28) -> probabilities (N, 10),
standardisation and TTA inside the graph), ``model_card.md``, ``bentofile.yaml`` and
``bento.json`` (the BentoML model and Bento tags: serve the Bento by that tag). The
stage stops, before storing anything, if ONNX Runtime and torch disagree on any test
image (argmax) or by 1e-5 or more in any probability. With ``promote.quantize: int8``
the served ``model.onnx`` is the export's static int8 quantization, calibrated on
CALIBRATION_IMAGES images of ``--calibration`` (train.npz from split); the stage stops
if it keeps the float model's label on less than 99.9 % of the test digits or loses more
than 0.05 points of accuracy.

A champion already packaged with the same service code keeps its Bento: `latest` moves
only when a new champion (or new service code) is packaged. Inside a queued or
``--temp`` DVC experiment the stage exports and checks the candidate promote chose,
writes the card, and stores and builds nothing (``"applied": false`` in bento.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline import atomic, cli, export, faults, inference, registry, tracking
from pipeline.errors import StageError
from pipeline.params import (
    MlflowParams,
    PromoteParams,
    ServeParams,
    load_section,
)
from serving.contract import MODEL_NAME, store_model

ROOT = Path(__file__).resolve().parents[2]  # the build context: bentofile paths start here
BENTOFILE = ROOT / "serving" / "bentofile.yaml"
CALIBRATION_IMAGES = 1024  # the first of train.npz: its order is already shuffled


def exported(
    run_id: str, test: Path, quantize: str, calibration: Path
) -> tuple[bytes, dict, dict, dict]:
    """(the ONNX bytes to serve, the checks they passed, normalisation stats, the
    temperature calibration) of a run's model: the float export, or its int8
    quantization; its probabilities are the calibrated ones, as evaluate's."""
    with tempfile.TemporaryDirectory() as tmp:
        candidate, stats, weights, calibrated = tracking.trained_files(run_id, Path(tmp))
        predictor = inference.load_predictor(
            candidate, weights, stats, temperature=calibrated["temperature"]
        )
    onnx_bytes = export.export_onnx(predictor)
    arrays = atomic.read_npz(test)
    pixels = inference.to_pixels(arrays["images"])
    check = export.check_onnx(onnx_bytes, predictor, pixels) | {"quantize": quantize}
    if quantize == "int8":
        images = atomic.read_npz(calibration)["images"][:CALIBRATION_IMAGES]
        float_bytes = onnx_bytes
        onnx_bytes = export.quantize_int8(float_bytes, inference.to_pixels(images).numpy())
        check["int8"] = export.check_quantized(
            onnx_bytes, float_bytes, pixels.numpy(), arrays["labels"]
        )
    return onnx_bytes, check, stats, calibrated


def quantization_line(check: dict) -> str:
    q = check.get("int8")
    if q is None:
        return "Served as the float32 ONNX export."
    return (
        f"Served int8-quantized (static, calibrated on {CALIBRATION_IMAGES:,} training images): "
        f"it keeps the float model's label on {q['label_agreement']:.2%} of the "
        f"{q['images']:,} test digits and changes its accuracy by {-q['accuracy_loss']:+.2%}."
    )


def robustness_section(folder: Path, candidate: str, run_id: str) -> str:
    """The card's robustness paragraph, from ``folder/<candidate>/metrics.json`` (the
    robustness stage's report), if it scored this very run; otherwise a line saying so."""
    path = folder / candidate / "metrics.json"
    if not path.is_file():
        return f"**Robustness.** Not measured: `{path}` is missing.\n\n"
    report = atomic.read_json(path)
    if report.get("run_id") != run_id:
        return (
            f"**Robustness.** Not measured for this run: `{path}` scored run "
            f"`{report.get('run_id')}` of {candidate}.\n\n"
        )
    rows = "\n".join(f"| {kind} | {value:.3f} |" for kind, value in report["accuracy"].items())
    return f"""**Robustness.** Accuracy on {report["n_per_kind"]:,} official test digits rendered as
people send them (photos and scans on paper: docs/robustness.md), read through the service's
own preprocessing; as plain arrays, the same digits score {report["reference_accuracy"]:.3f}.

| kind | accuracy |
|---|---|
{rows}

"""


def corruption_section(folder: Path, candidate: str) -> str:
    """The card's table of error on corrupted test digits per family and serving path,
    from ``folder/<candidate>/corruptions.json``."""
    path = folder / candidate / "corruptions.json"
    if not path.is_file():
        return ""
    test = atomic.read_json(path)["test"]
    rows = "\n".join(
        f"| {family} | {error:.1%} | {test['images']['families'][family]:.1%} |"
        for family, error in test["arrays"]["families"].items()
    )
    return f"""**Common corruptions.** Error on official test digits spoilt in the common ways
(noise, blur, geometry, intensity, occlusion, outlines; docs/robustness.md), sent as
arrays to `/predict` and as PNG files to `/predict_image`; the mean is over families.

| family | `/predict` | `/predict_image` |
|---|---|---|
{rows}
| **mean** | **{test["arrays"]["mean_error"]:.1%}** | **{test["images"]["mean_error"]:.1%}** |

"""


def source_note(info: dict) -> str:
    """Whether the run's code and params were the commit's (run outputs aside)."""
    if info.get("git_source_changed") == "true":
        return f"with uncommitted changes to {info['git_changed_source']}"
    if info.get("git_source_changed") == "false":
        return "code and params as committed"
    return "changes to it not recorded"


def model_card(info: dict, check: dict, robustness: str = "") -> str:
    metrics = info["metrics"]
    return f"""# MNIST digit classifier: {info["candidate"]}

Registry: `{info["registry_model"]}` version {info["registry_version"]} (alias `{info["alias"]}`),
MLflow run `{info["run_id"]}`, git commit `{info["git_commit"]}` ({source_note(info)}).

**What it does.** Classifies a 28x28 greyscale handwritten digit (0-9). `predict` takes
batches of MNIST-style arrays; `predict_image` takes a PNG/JPEG and preprocesses it the
MNIST way (grey, ink light on dark, cropped, scaled into 20x20, centred by mass).

**Trained on.** MNIST: {info["n_train"]} training images from the official 60,000, apart
from a stratified validation split carved from them. Selected by validation accuracy only.

**Metrics.** Validation accuracy {metrics["val_accuracy"]:.4f}; test accuracy
{metrics["test_accuracy"]:.4f} on {check["images"]:,} official test images (read once, by evaluate).
ONNX Runtime agrees with torch on all {check["images"]} test images (max probability
difference {check["max_probability_diff"]:.1e}). {quantization_line(check)}

{calibration_paragraph(info)}

{robustness}**Limits.** Trained only on centred, size-normalised digits from American writers in the
1990s: other scripts, letters, several digits in one image, or photos with clutter are
out of scope; the unsure flag catches some of them, not all.
"""


def calibration_paragraph(info: dict) -> str:
    """What the probabilities mean: the temperature, test ECE before and after it, and the
    unsure threshold with what it did on validation."""
    metrics, unsure = info["metrics"], info["unsure_on_validation"]
    if "test_ece" not in metrics:
        return "**Calibration.** None: this version was trained before calibration was fitted."
    text = (
        f"**Calibration.** Probabilities are softmax(logits / {info['temperature']:.3f}), the "
        "temperature fitted on the validation split; expected calibration error on test "
        f"{metrics['test_ece_uncalibrated']:.4f} without it, {metrics['test_ece']:.4f} with it. "
        f"An answer whose top probability is below {info['unsure_below']} says `unsure`"
    )
    if unsure is None:
        return text + "."

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    return text + (
        f": on validation, {percent(unsure['unsure_share'])} of digits, of which "
        f"{percent(unsure['unsure_accuracy'])} were right (the others: "
        f"{percent(unsure['sure_accuracy'])})."
    )


def source_digest() -> str:
    """sha256 over the files the Bento ships (serving/bentofile.yaml's include)."""
    config = yaml.safe_load(BENTOFILE.read_text())
    files = sorted(
        path
        for pattern in config["include"]
        for path in ROOT.glob(pattern)
        if path.is_file() and "__pycache__" not in path.parts
    )
    digest = hashlib.sha256(BENTOFILE.read_bytes())
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def labelled(listing, name: str, labels: dict[str, str]):
    """The newest item named ``name`` in a BentoML store listing (``bentoml.models.list``
    or ``bentoml.bentos.list``) that carries all of ``labels``, or None."""
    from bentoml.exceptions import NotFound

    try:
        items = listing(name)
    except NotFound:  # nothing of that name stored yet
        return None
    matching = [i for i in items if labels.items() <= (i.info.labels or {}).items()]
    return max(matching, key=lambda i: i.info.creation_time, default=None)


def stored_model(onnx_bytes: bytes, info: dict, labels: dict[str, str]):
    """The BentoML model for this ONNX file and registry version: reused if stored."""
    import bentoml

    return labelled(bentoml.models.list, MODEL_NAME, labels) or store_model(
        onnx_bytes, info, labels=labels
    )


def build_bento(model_tag: str, card: Path, out: Path, labels: dict[str, str]) -> str:
    """``bentoml build`` with the model card as description, unless a Bento of this
    model and this source exists; returns the Bento's tag."""
    import bentoml

    config = yaml.safe_load(BENTOFILE.read_text())
    existing = labelled(bentoml.bentos.list, config["name"], labels)
    config["description"] = f"file: ./{os.path.relpath(card.resolve(), ROOT)}"
    config["labels"] = {**config.get("labels", {}), **labels}
    bentofile = out / "bentofile.yaml"
    atomic.write_text(bentofile, yaml.safe_dump(config, sort_keys=False))
    if existing is not None:
        return str(existing.tag)
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
            str(ROOT),
        ],
        env={**os.environ, "MNIST_MODEL_TAG": model_tag},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StageError(f"bentoml build failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def info_of(name: str, version, stats: dict, calibrated: dict, unsure_below: float) -> dict:
    """What the service's /model_info says about the packaged registry version; the
    service flags an answer unsure below ``unsure_below``."""
    run = registry.client().get_run(version.run_id)
    return {
        "registry_model": name,
        "registry_version": str(version.version),
        "alias": registry.ALIAS,
        "candidate": version.tags.get("candidate", "?"),
        "run_id": version.run_id,
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "git_source_changed": run.data.tags.get("git_source_changed", "unknown"),
        "git_changed_source": run.data.tags.get("git_changed_source", ""),
        "n_train": int(run.data.params.get("n_train", 0)),
        "metrics": {
            "val_accuracy": float(version.tags["val_accuracy"]),
            "test_accuracy": float(version.tags["test_accuracy"]),
            # Versions registered before calibration carry no ECE.
            **{
                key: float(version.tags[key])
                for key in ("test_ece", "test_ece_uncalibrated")
                if key in version.tags
            },
        },
        "normalisation": stats,
        "temperature": calibrated["temperature"],
        "unsure_below": unsure_below,
        "unsure_on_validation": next(
            (row for row in calibrated["thresholds"] if row["threshold"] == unsure_below), None
        ),
    }


def check_only(decision: dict, args, quantize: str) -> None:
    """In an experiment's temporary copy: export and check what promote chose, store
    and build nothing."""
    out: Path = args.out
    onnx_bytes, check, _, _ = exported(decision["run_id"], args.test, quantize, args.calibration)
    atomic.write_bytes(out / "model.onnx", onnx_bytes)
    atomic.write_text(
        out / "model_card.md",
        f"""# An experiment's candidate: {decision["candidate"]}

Not packaged: built inside a DVC experiment's temporary copy, where nothing shared may
change. MLflow run `{decision["run_id"]}`: validation accuracy
{decision["val_accuracy"]:.4f}, test accuracy {decision["test_accuracy"]:.4f}. ONNX Runtime
agrees with torch on all {check["images"]} test images. {quantization_line(check)}
""",
    )
    atomic.write_text(out / "bentofile.yaml", BENTOFILE.read_text())
    atomic.write_json(
        out / "bento.json",
        {
            "applied": False,
            "bento": None,
            "model": None,
            "candidate": decision["candidate"],
            "run_id": decision["run_id"],
            "onnx_check": check,
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        },
    )
    print(
        f"package: in an experiment's temporary copy: {decision['candidate']} exported and "
        f"checked (ONNX == torch on {check['images']} test images); no Bento built"
    )


def main(args) -> None:
    promote_params = load_section(args.params, "promote", PromoteParams)
    serve_params = load_section(args.params, "serve", ServeParams)
    tracking.setup(load_section(args.params, "mlflow", MlflowParams))
    decision = atomic.read_json(args.decision)
    out: Path = args.out
    if not tracking.in_workspace():
        check_only(decision, args, promote_params.quantize)
        return
    name = promote_params.registered_model
    version = registry.current_champion(name)
    if version is None:
        raise StageError(f"{name} has no {registry.ALIAS} alias yet: run the promote stage")
    if str(version.version) != str(decision.get("champion_version")):
        print(
            f"package: the champion alias is on version {version.version}, not on promote's "
            f"version {decision.get('champion_version')} (moved since, e.g. by --rollback): "
            f"packaging version {version.version}"
        )
    onnx_bytes, check, stats, calibrated = exported(
        version.run_id, args.test, promote_params.quantize, args.calibration
    )
    onnx_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    info = info_of(name, version, stats, calibrated, serve_params.unsure_below) | {
        "onnx_sha256": onnx_sha256
    }
    atomic.write_bytes(out / "model.onnx", onnx_bytes)
    card = model_card(
        info,
        check,
        robustness_section(args.robustness, info["candidate"], info["run_id"])
        + corruption_section(args.robustness, info["candidate"]),
    )
    atomic.write_text(out / "model_card.md", card)
    registry.describe(name, version.version, card)
    # The info is part of what is served (/model_info, the unsure threshold): a stored
    # model is reused only if it holds the same graph and the same info, so that another
    # clone's store (its own registry, run ids, settings) never hands back a stale one.
    info_sha256 = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    labels = {
        "candidate": info["candidate"],
        "registry_version": info["registry_version"],
        "onnx_sha256": onnx_sha256,
        "info_sha256": info_sha256,
    }
    faults.point("package.exported")  # exported and checked, nothing stored yet
    model_ref = stored_model(onnx_bytes, info, labels)
    faults.point("package.stored")  # the model stored, the Bento not built yet
    bento_labels = {"model": str(model_ref.tag), "source_sha256": source_digest()}
    bento_tag = build_bento(str(model_ref.tag), out / "model_card.md", out, bento_labels)
    atomic.write_json(
        out / "bento.json",
        {
            "applied": True,
            "bento": bento_tag,
            "model": str(model_ref.tag),
            "registry_version": info["registry_version"],
            "candidate": info["candidate"],
            "onnx_sha256": onnx_sha256,
            "onnx_check": check,
        },
    )
    print(
        f"package: {name} v{version.version} ({info['candidate']}) -> model {model_ref.tag}, "
        f"bento {bento_tag}; ONNX == torch on {check['images']} test images "
        f"(max diff {check['max_probability_diff']:.1e}). Serve it by its tag: "
        f"bentoml serve {bento_tag}"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("package", __doc__)
    p.add_argument("--decision", required=True, type=Path, help="decision.json from promote")
    p.add_argument("--test", required=True, type=Path, help="test.npz from split")
    p.add_argument(
        "--calibration", required=True, type=Path, help="train.npz from split (int8 ranges)"
    )
    p.add_argument(
        "--robustness", required=True, type=Path, help="the robustness stages' reports folder"
    )
    p.add_argument("--out", required=True, type=Path, help="folder for ONNX, card and tags")
    cli.run("package", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
