"""The shared entry point of every stage: argparse, clear errors, exit codes.

A stage's ``main`` raises one of the expected errors (bad params, a corrupt file, an
unreachable mirror); ``run`` prints it as ``<stage>: error: ...`` and exits 1, with
no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline.idx import IdxError
from pipeline.params import ParamsError


class StageError(RuntimeError):
    """An expected failure of a stage, with a message a user can act on."""


EXPECTED = (StageError, ParamsError, IdxError, FileNotFoundError)


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m pipeline.{stage}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return p


def run(stage: str, main: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    try:
        main(args)
    except EXPECTED as error:
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; outputs left as they were", file=sys.stderr)
        sys.exit(130)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    return p.parse_args(argv)
