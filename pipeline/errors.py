"""The one exception type a stage expects: bad params, a corrupt file, an unreachable mirror.

Every expected failure derives from ``StageError``, so ``pipeline.cli`` can print it as
``<stage>: error: ...`` and exit 1 without knowing which library module raised it.
"""

from __future__ import annotations


class StageError(RuntimeError):
    """An expected failure of a stage, with a message a user can act on."""


class Terminated(BaseException):
    """SIGTERM, raised where the stage is: like KeyboardInterrupt, not an ``Exception``,
    so that nothing catches it by accident on the way out."""
