"""Typed, validated params: one pydantic model per section of params.yaml.

In: params.yaml (path from the command line). Out: a frozen model of one section.
An unknown key, a wrong type, a missing key or an out-of-range value raises ParamsError
naming the key (``train.candidates.mlp128.lr``) before a stage touches any output.

Every key that params.yaml carries is required here: the file is the one place values
live, so no default in code can disagree with it. Defaults remain only for a candidate's
optional features, and each means "off" (no momentum, no augmentation, one member).

A candidate is a union discriminated by ``arch``: each architecture (a module in
pipeline/architectures/) has exactly its own fields, so an MLP has no ``channels`` and a
logistic regression no ``lr``. The union is made from that folder when ``train`` is first
loaded, so the stages that never read it (fetch, split, ...) import no network code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pipeline.errors import StageError

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class ParamsError(StageError):
    """params.yaml is missing, unreadable or has a bad value; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FetchParams(Section):
    mirrors: list[str] = Field(min_length=1)  # tried in order, after $MNIST_MIRROR
    timeout_s: PosFloat
    retries: Annotated[int, Field(ge=0, le=10)]


class SplitParams(Section):
    val_size: PosInt
    train_limit: PosInt | None  # a stratified subset of the training split; null = all
    test_limit: PosInt | None  # a stratified subset of the test split; null = all 10,000
    seed: Seed


class NormaliseParams(Section):
    standardise: bool


# ---- candidates: what every one has; each architecture's own fields are in its module
# ---- in pipeline/architectures/ ------------------------------------------------------


class Augment(Section):
    """Random affine jitter of training images, applied per batch on the fly."""

    max_shift: Annotated[float, Field(ge=0, le=0.3)] = 0.0  # fraction of 28 px
    max_rotate: Annotated[float, Field(ge=0, le=45)] = 0.0  # degrees
    max_scale: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # 0.1 = scale in [0.9, 1.1]
    # Share of training images spoilt in one way (noise, blur, a grey offset, fog,
    # strokes across, outlines: pipeline/augment.py), after the jitter.
    corrupt: Fraction = 0.0

    @property
    def jitters(self) -> bool:
        return any((self.max_shift, self.max_rotate, self.max_scale))

    @property
    def enabled(self) -> bool:
        return self.jitters or self.corrupt > 0


class Candidate(Section):
    """What every candidate has."""

    description: str
    # The published reference system this candidate reproduces (R1-R5 of
    # ../shared/reference-systems.md; `make reproduce` compares them), or null: our own.
    reference: Literal["R1", "R2", "R3", "R4", "R5"] | None = None
    # Use only the first N (stratified, seeded) images of the train split; null = all.
    train_size: PosInt | None = None

    @property
    def is_torch(self) -> bool:
        return isinstance(self, TorchCandidate)

    @property
    def is_cnn(self) -> bool:
        return registry()[self.arch].cnn


class TorchCandidate(Candidate):
    """A network trained by mini-batch gradient descent."""

    optimizer: Literal["sgd", "adam", "adamw"]
    lr: PosFloat
    epochs: PosInt
    batch_size: PosInt
    momentum: Fraction = 0.0  # sgd only
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Literal["constant", "onecycle", "cosine"] = "constant"
    label_smoothing: Fraction = 0.0
    # Initial weights: torch's defaults, or Keras's (Glorot-uniform weights, zero biases)
    # for the write-ups that used Keras.
    init: Literal["torch", "glorot"] = "torch"
    augment: Augment = Augment()
    # Train this many copies of the network side by side, each from its own initial
    # weights; predict with their averaged probabilities. "shared": every member sees the
    # same batches; "own": each its own order and jitter (seed + k), as if trained alone.
    members: Annotated[int, Field(ge=1, le=8)] = 1
    member_data: Literal["shared", "own"] = "shared"
    # Test-time augmentation: average predictions over this many one-pixel shifts too.
    tta: Annotated[int, Field(ge=0, le=8)] = 0
    # per_image: each image's background (its median) to 0 and its brightest ink to 1
    # before the network, whatever the grey level or contrast it came in (models.py).
    input_norm: Literal["none", "per_image"] = "none"


class LogReg(Candidate):
    """scikit-learn's multinomial logistic regression."""

    arch: Literal["logreg"]
    C: PosFloat  # inverse regularisation strength
    max_iter: PosInt


def registry() -> dict[str, Any]:
    """pipeline.architectures.REGISTRY: name -> Architecture. Imported here only when a
    stage reads ``train`` (a stage that does lists pipeline/architectures in its DVC
    deps; tests/test_dvc_deps.py checks it)."""
    return importlib.import_module("pipeline.architectures").REGISTRY


def candidate_union() -> Any:
    """Every registered architecture's params, discriminated by ``arch``."""
    models = tuple(architecture.params for architecture in registry().values())
    return Annotated[Union[models], Field(discriminator="arch")]  # noqa: UP007


def arch_names() -> list[str]:
    return sorted(registry())


# The architectures' names before they were named for what they are: MLflow runs and
# registry versions logged earlier carry these in their candidate.json and tags.
LEGACY_ARCHS = {"cnn_numpy": "conv1_dense", "cnn_fast": "conv3_linear", "cnn_best": "conv3_dense"}


def candidate_from_logged(logged: dict[str, Any]) -> TorchCandidate | LogReg:
    """A candidate from the candidate.json a train stage logged to MLflow, including those
    logged before each architecture had its own model (one flat model whose dump carried
    every architecture's fields): old arch names are mapped, and fields that the
    architecture does not have are dropped."""
    arch = LEGACY_ARCHS.get(logged.get("arch"), logged.get("arch"))
    if arch not in registry():
        raise ParamsError(f"logged candidate has an unknown arch {logged.get('arch')!r}")
    model = registry()[arch].params
    fields = {k: v for k, v in logged.items() if k in model.model_fields}
    return model.model_validate({**fields, "arch": arch}, strict=False)


class TrainParams(Section):
    enabled: list[str] = Field(min_length=1)  # which candidates `dvc repro` trains
    seed: Seed
    # Torch intra-op threads; 0 = 1 for the dense models, every core for the CNNs.
    threads: Annotated[int, Field(ge=0, le=256)]
    # auto: CUDA when torch sees a GPU, else the CPU (evaluate follows the same rule).
    device: Literal["auto", "cpu", "cuda", "mps"]
    # Autocast: auto = bf16 (or fp16 with a gradient scaler) on a GPU, float32 on the CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    # Data-parallel ranks on this machine for the torch candidates: > 1 runs the train
    # stage under torchrun (gloo on the CPU, NCCL on CUDA).
    processes: Annotated[int, Field(ge=1, le=64)]
    # Each entry validated by its architecture's params: resolved by complete(), which
    # load_section calls, from pipeline/architectures/.
    candidates: dict[str, AnyCandidate] = Field(min_length=1)  # noqa: F821

    def candidate(self, name: str) -> TorchCandidate | LogReg:
        if name not in self.candidates:
            raise ParamsError(
                f"train.candidates: no candidate named {name!r}; known: {sorted(self.candidates)}"
            )
        return self.candidates[name]

    @model_validator(mode="after")
    def _enabled_exist(self) -> TrainParams:
        unknown = [name for name in self.enabled if name not in self.candidates]
        if unknown:
            raise ValueError(
                f"enabled names unknown candidates {unknown}; known: {sorted(self.candidates)}"
            )
        references = [
            candidate.reference for candidate in self.candidates.values() if candidate.reference
        ]
        twice = sorted({r for r in references if references.count(r) > 1})
        if twice:
            raise ValueError(f"more than one candidate reproduces {twice} (their `reference`)")
        return self

    def reproducing(self) -> dict[str, str]:
        """Reference system (R1-R5) -> the candidate that reproduces it."""
        return {
            candidate.reference: name
            for name, candidate in self.candidates.items()
            if candidate.reference
        }


class EnabledParams(Section):
    """``train.enabled`` alone, for the stages that compare the candidates' outputs
    (record, summarize) and build no network: they neither read nor validate the
    candidates' settings, which the train stages do."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    enabled: list[str] = Field(min_length=1)


class EvaluateParams(Section):
    batch_size: PosInt
    grid_size: Annotated[int, Field(ge=1, le=400)]  # digits in each image grid


class Corruptions(Section):
    """Validation and test digits spoilt in the common ways (pipeline/corruptions.py)."""

    per_split: Annotated[int, Field(gt=0, le=10_000)]  # digits of each split, each corruption
    seed: Seed  # which digits, and every random choice of the corruptions
    severity: Annotated[float, Field(gt=0, le=1)]  # the strength reported at
    # family -> corruption names (pipeline.corruptions.CORRUPTIONS, checked there)
    families: dict[str, list[str]] = Field(min_length=1)


class RobustnessParams(Section):
    """The test digits rendered as people send them (pipeline/photos.py's kinds), and
    digits spoilt in the common ways."""

    per_kind: Annotated[int, Field(gt=0, le=10_000)]  # test digits rendered per kind
    seed: Seed  # which digits, and every random choice of the rendering
    kinds: list[str] = Field(min_length=1)  # names in pipeline.photos.KINDS, checked there
    corruptions: Corruptions

    @model_validator(mode="after")
    def _kinds_once(self) -> RobustnessParams:
        twice = sorted({kind for kind in self.kinds if self.kinds.count(kind) > 1})
        if twice:
            raise ValueError(f"kinds lists {twice} more than once")
        return self


class MlflowParams(Section):
    experiment: str = Field(min_length=1)
    store: str = Field(min_length=1)  # relative to the project root; MLFLOW_TRACKING_URI wins
    system_metrics: bool  # log CPU, memory (and GPU) use in each training run


class PromoteParams(Section):
    registered_model: str = Field(min_length=1)
    min_improvement: Annotated[float, Field(ge=0, le=1)]
    # The serving budget: only candidates of at most this many multiply-adds an image may
    # become champion; null = any.
    max_multiply_adds: PosInt | None
    # The robustness floor: only candidates whose error on the validation split's
    # corrupted copies (the mean over corruption families, robustness.corruptions) is at
    # most this, on both serving paths, may become champion; null = any.
    max_corruption_error: Annotated[float, Field(gt=0, le=1)] | None
    # What package serves: the float ONNX export, or its int8 quantization (checked
    # against the float model on the test digits; a failed check stops the stage).
    quantize: Literal["none", "int8"]


class ServeParams(Section):
    # An answer whose top (calibrated) probability is below this is flagged unsure: a field
    # in the API's answers and a cue on the page. 0 flags nothing.
    unsure_below: Annotated[float, Field(ge=0, lt=1)]


class FeedbackParams(Section):
    # The share of corrected digits kept to test on, never trained on (chosen by a hash of
    # each digit's pixels).
    holdout_percent: Annotated[float, Field(gt=0, lt=100)]


class DriftParams(Section):
    window: PosInt  # the latest this many served digits are compared
    min_digits: PosInt  # fewer in the window: no verdict
    reference_digits: PosInt  # a stratified sample of the validation split
    alpha: Annotated[float, Field(gt=0, lt=1)]  # a test rejects below this p-value
    components: Annotated[int, Field(ge=2, le=784)]  # principal components for the inputs test
    seed: Seed


class ReviewParams(Section):
    # How far a change may move the figures `make report` compares with its base before
    # the gate refuses it (review/compare.py); each refusal names the key that would let it by.
    # The champion's validation accuracy may drop by at most this (a fraction: 0.001 is
    # a tenth of a point).
    max_val_accuracy_drop: Annotated[float, Field(ge=0, le=1)]
    # Single-digit /predict p99 of the champion's Bento may grow by at most this share of
    # the base's, both measured side by side in the same run.
    max_p99_increase: Annotated[float, Field(ge=0)]
    # The champion's mean error over corruption families on the validation split, on
    # either serving path, may grow by at most this (a fraction).
    max_corruption_error_increase: Annotated[float, Field(ge=0, le=1)]
    # A candidate reproducing a published system (`reference`) whose base was within that
    # system's band must stay within it.
    keep_reproductions: bool


S = TypeVar("S", bound=Section)


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(path: Path, section: str, model: type[S]) -> S:
    """Validate one section of params.yaml; raise ParamsError naming every bad key."""
    data = load_yaml(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section '{section}'")
    complete(model)
    try:
        return model.model_validate(data[section])
    except ValidationError as error:
        raise ParamsError(format_errors(path, section, error)) from None


def complete(model: type[Section]) -> None:
    """Resolve ``model``'s candidate union (TrainParams') from the registered
    architectures, once; nothing to do for the other sections."""
    if not model.__pydantic_complete__:
        model.model_rebuild(_types_namespace={"AnyCandidate": candidate_union()})


def validate_candidate(data: dict[str, Any]) -> TorchCandidate | LogReg:
    """One candidate's settings (as in params.yaml) into its architecture's model."""
    return TypeAdapter(candidate_union()).validate_python(data)


def format_errors(path: Path, section: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc, arch = _without_tag(item["loc"])
        key = ".".join([section, *loc])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key for arch {arch!r} (typo?)" if arch else "unknown key (typo?)"
        elif item["type"] == "union_tag_invalid":
            message = f"arch must be one of {', '.join(arch_names())}"
        elif item["type"] == "union_tag_not_found":
            message = f"needs an 'arch': one of {', '.join(arch_names())}"
        got = item.get("input")
        quiet = item["type"] in ("missing", "extra_forbidden", "union_tag_not_found")
        suffix = "" if quiet or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {key}: {message}{suffix}")
    return "\n".join(lines)


def _without_tag(loc: tuple) -> tuple[list[str], str | None]:
    """pydantic puts a union's tag in the location (candidates, mlp128, mlp, lr): return
    the location without it (candidates, mlp128, lr) and the tag."""
    parts = [str(part) for part in loc]
    if len(parts) > 2 and parts[0] == "candidates" and parts[2] in arch_names():
        return parts[:2] + parts[3:], parts[2]
    return parts, None
