"""The networks a candidate can be: one module per architecture in this folder, each
registered under its ``arch`` name.

An architecture is two things: its params, a ``TorchCandidate`` subclass whose ``arch``
field is a ``Literal`` of its name and which has exactly the fields the network reads; and
a builder, params -> ``nn.Module`` from standardised images (B, 1, 28, 28) to logits
(B, 10), decorated with ``@register(Params)``. Everything else is the same for every
architecture: ensembles, the per-image stretch and the initialisation (pipeline/models.py),
training, evaluation, the ONNX export, the robustness report, promotion and serving.
docs/extending.md is the recipe.

Importing this package imports every module in it, so that a new module needs no list
to be added to.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.params import Candidate, ParamsError


@dataclass(frozen=True)
class Architecture:
    name: str
    params: type[Candidate]
    build: Callable[[Any], nn.Module]
    # Convolutional: trained and evaluated in channels_last, and with every core
    # (pipeline/runtime.py); the dense networks' small matrices run best on one.
    cnn: bool


REGISTRY: dict[str, Architecture] = {}


def arch_name(params: type[Candidate]) -> str:
    """The name in ``params``' ``arch: Literal["name"]`` field."""
    field = params.model_fields.get("arch")
    names = typing.get_args(field.annotation) if field else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(f"{params.__name__} needs a field arch: Literal['<its name>']")
    return names[0]


def register(params: type[Candidate], *, cnn: bool = False):
    """Decorator: the function builds the network of ``params``' architecture."""

    def add(build: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        name = arch_name(params)
        if name in REGISTRY:
            raise TypeError(f"two architectures are named {name!r}")
        REGISTRY[name] = Architecture(name, params, build, cnn)
        return build

    return add


def get(name: str) -> Architecture:
    if name not in REGISTRY:
        raise ParamsError(f"no architecture named {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
