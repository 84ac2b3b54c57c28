"""The shared entry point of every stage: argparse, clear errors, exit codes.

A stage's ``main`` raises a ``StageError`` (bad params, a corrupt file, an unreachable
mirror) or FileNotFoundError for a missing input; ``run`` prints it as
``<stage>: error: ...`` and exits 1, with no traceback. Anything else is a bug and keeps
its traceback. SIGTERM (what a scheduler or `kill` sends) becomes ``Terminated``, so the
stage unwinds as on Ctrl-C: its MLflow run ends KILLED and it exits 143 (130 for Ctrl-C),
its outputs left as they were (each is written atomically).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from pipeline.errors import StageError, Terminated

EXPECTED = (StageError, FileNotFoundError)


def _terminated(signum, _frame) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m pipeline.stages.{stage}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return p


def run(stage: str, main: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main(args)
    except EXPECTED as error:
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, Terminated) as stop:
        print(
            f"{stage}: interrupted ({stop or 'Ctrl-C'}); outputs left as they were", file=sys.stderr
        )
        sys.exit(143 if isinstance(stop, Terminated) else 130)
