"""Atomic file writes: a temporary file in the same folder, then os.replace.

A stage killed midway leaves either the old file or the new one, never half of one for
DVC to hash. What a kill can leave is a temporary file beside it (``.name.XXXX.tmp``),
never at an output path; the next write of that path removes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline import faults


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); an output gets the mode open() would give it.
    os.chmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        faults.point("atomic.replace")  # the last moment a kill can interrupt the write
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, header: list[str], rows: Iterable[Sequence]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_with(path: Path, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write whatever ``writer`` puts into a binary file object."""
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes(path, buffer.getvalue())


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed .npz (fast to read); load it back with allow_pickle=False."""
    write_with(path, lambda f: np.savez(f, **arrays))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
