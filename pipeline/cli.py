"""The shared entry point of every stage: argparse, clear errors, exit codes.

A stage's ``main`` raises a ``StageError`` (bad params, a corrupt file, an unreachable
mirror) or FileNotFoundError for a missing input; ``run`` prints it as
``<stage>: error: ...`` and exits 1, with no traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.errors import StageError

EXPECTED = (StageError, FileNotFoundError)


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m pipeline.stages.{stage}",
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
