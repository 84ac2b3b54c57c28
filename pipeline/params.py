"""Typed, validated params: one pydantic model per section of params.yaml.

In: params.yaml (path from the command line). Out: a frozen model of one section.
An unknown key, a wrong type or an out-of-range value raises ParamsError naming the
key (``train.candidates.mlp128.lr``) before a stage touches any output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or has a bad value; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FetchParams(Section):
    mirrors: list[str] = Field(min_length=1)
    timeout_s: PosFloat = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1


class SplitParams(Section):
    val_size: PosInt = 10_000
    # Stratified subset of the training split for quick runs; null keeps all of it.
    train_limit: PosInt | None = None
    # Stratified subset of the test split (quick runs only); null keeps all 10,000.
    test_limit: PosInt | None = None
    seed: Seed = 0


class NormaliseParams(Section):
    standardise: bool = True


class Augment(Section):
    """Random affine jitter of training images, applied per batch on the fly."""

    max_shift: Annotated[float, Field(ge=0, le=0.3)] = 0.0  # fraction of 28 px
    max_rotate: Annotated[float, Field(ge=0, le=45)] = 0.0  # degrees
    max_scale: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # 0.1 = scale in [0.9, 1.1]


BATCH_NORM_ARCHS = {"cnn_fast", "cnn_best"}


class Candidate(Section):
    """One model to train: architecture plus its optimiser and schedule."""

    arch: Literal["mlp", "cnn_numpy", "cnn_fast", "cnn_best", "logreg"]
    description: str = ""
    # mlp only: hidden layer sizes and their activation.
    hidden: list[PosInt] = []
    activation: Literal["relu", "tanh", "sigmoid", "softmax"] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # cnn_fast, cnn_best: the widths of their three convolution stages.
    channels: Annotated[list[PosInt], Field(min_length=3, max_length=3)] = [16, 32, 64]
    # cnn_fast, cnn_best: "pool": the first 5x5 convolution runs at 28x28 and is max-pooled
    # to 14x14; "stride": it runs at stride 2 straight to 14x14, a quarter of the work.
    first_layer: Literal["pool", "stride"] = "pool"
    # Initial weights: torch's defaults, or Keras's (Glorot-uniform weights, zero biases)
    # for the write-ups that used Keras.
    init: Literal["torch", "glorot"] = "torch"
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: PosFloat = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Literal["constant", "onecycle", "cosine"] = "constant"
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    epochs: PosInt = 10
    batch_size: PosInt = 32
    # Forward and backward each batch in parts of at most this many images: the same
    # update, but each part's activations stay in cache. Not with batch norm, whose
    # statistics would then come from the parts. null = the whole batch at once.
    micro_batch: PosInt | None = None
    # Use only the first N (stratified, seeded) images of the train split; null = all.
    train_size: PosInt | None = None
    augment: Augment = Augment()
    # Torch models: train this many copies of the network side by side, each from its own
    # initial weights, on the same batches; predict with their averaged probabilities.
    members: Annotated[int, Field(ge=1, le=8)] = 1
    # Test-time augmentation: average predictions over this many shifted copies.
    tta: Annotated[int, Field(ge=0, le=8)] = 0
    # logreg only: inverse regularisation strength and iteration cap.
    C: PosFloat = 1.0
    max_iter: PosInt = 100

    @model_validator(mode="after")
    def _mlp_needs_hidden(self) -> Candidate:
        if self.arch == "mlp" and not self.hidden:
            raise ValueError("arch 'mlp' needs a non-empty 'hidden' list of layer sizes")
        if self.members > 1 and self.arch == "logreg":
            raise ValueError("members: a logreg candidate is one scikit-learn model; leave it 1")
        if self.micro_batch and self.arch in BATCH_NORM_ARCHS:
            raise ValueError(f"micro_batch: arch {self.arch!r} uses batch norm, whose "
                             "statistics would come from the parts; leave it null")
        return self


class TrainParams(Section):
    # Which candidates `dvc repro` trains; each must be a key of `candidates`.
    enabled: list[str] = Field(min_length=1)
    seed: Seed = 0
    threads: Annotated[int, Field(ge=0, le=256)] = 0  # 0 = auto (see train.set_threads)
    candidates: dict[str, Candidate] = Field(min_length=1)

    @model_validator(mode="after")
    def _enabled_exist(self) -> TrainParams:
        unknown = [name for name in self.enabled if name not in self.candidates]
        if unknown:
            raise ValueError(
                f"enabled names unknown candidates {unknown}; known: {sorted(self.candidates)}"
            )
        return self


class EvaluateParams(Section):
    batch_size: PosInt = 256
    grid_size: Annotated[int, Field(ge=1, le=400)] = 64  # digits in each image grid


class MlflowParams(Section):
    experiment: str = Field(min_length=1)
    # Relative to the project root unless MLFLOW_TRACKING_URI is set.
    store: str = "mlflow.db"


class PromoteParams(Section):
    registered_model: str = Field(min_length=1)
    min_improvement: Annotated[float, Field(ge=0, le=1)] = 0.0
    # The serving budget: only candidates of at most this many multiply-adds an image may
    # become champion; null = any.
    max_multiply_adds: PosInt | None = None


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
    """Validate one section of params.yaml; raise ParamsError naming the first bad key."""
    data = load_yaml(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section '{section}'")
    try:
        return model.model_validate(data[section])
    except ValidationError as error:
        raise ParamsError(format_errors(path, section, error)) from None


def format_errors(path: Path, section: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join([section, *(str(part) for part in item["loc"])])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (typo?)"
        got = item.get("input")
        suffix = "" if item["type"] in ("missing", "extra_forbidden") else f" (got {got!r})"
        lines.append(f"{path}: {key}: {message}{suffix}")
    return "\n".join(lines)
