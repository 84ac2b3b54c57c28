"""fetch: download the four MNIST idx files and verify them.

In: ``fetch`` params (mirrors tried in order, timeout, retries) and, optionally, the
env var MNIST_MIRROR, a local folder tried before any URL. Out: the four decompressed
idx files in ``--out``, each checked against its pinned SHA-256. If any file cannot be
had from any source, the stage exits 1, names every attempt, and writes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline import atomic, cli
from pipeline.errors import StageError
from pipeline.params import FetchParams, load_section

MIRROR_ENV = "MNIST_MIRROR"

# SHA-256 of the *decompressed* official files (as in ../shared/mnist/SHA256SUMS).
FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MAX_DOWNLOAD_BYTES = 64 * 2**20  # above the largest file, compressed or not


class FetchError(StageError):
    pass


@dataclass(frozen=True)
class Attempt:
    source: str
    problem: str

    def __str__(self) -> str:
        return f"  - {self.source}: {self.problem}"


def sources(params: FetchParams) -> list[str]:
    """Local mirror first (if MNIST_MIRROR is set), then the URLs in params order."""
    local = os.environ.get(MIRROR_ENV)
    return ([local] if local else []) + list(params.mirrors)


def read_source(source: str, name: str, params: FetchParams) -> bytes:
    """The raw bytes of ``name`` (.gz preferred) from a folder or URL; raises OSError."""
    if "://" not in source:
        folder = Path(source)
        if not folder.is_dir():
            raise OSError(f"{folder} is not a folder (set {MIRROR_ENV} to the mirror's folder)")
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate.read_bytes()
        raise OSError(f"neither {name}.gz nor {name} is in {folder}")
    return download(source.rstrip("/") + f"/{name}.gz", params)


def download(url: str, params: FetchParams) -> bytes:
    last: Exception | None = None
    for _ in range(params.retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=params.timeout_s) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                if total and total > MAX_DOWNLOAD_BYTES:
                    raise OSError(f"{url} is {total} bytes, more than expected")
                chunks = []
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False
                ) as bar:
                    while chunk := response.read(1 << 16):
                        chunks.append(chunk)
                        bar.update(len(chunk))
                return b"".join(chunks)
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            last = error
    raise OSError(f"download failed: {last}")


def decompress(raw: bytes) -> bytes:
    if raw[:2] != b"\x1f\x8b":  # not gzip: an already decompressed mirror
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise OSError(f"corrupt gzip ({error})") from None


def fetch_file(name: str, params: FetchParams) -> bytes:
    """Verified decompressed bytes of ``name`` from the first source that has them."""
    expected = FILES[name]
    attempts = []
    for source in sources(params):
        try:
            data = decompress(read_source(source, name, params))
        except OSError as error:
            attempts.append(Attempt(source, str(error)))
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual == expected:
            return data
        attempts.append(
            Attempt(
                source,
                f"checksum mismatch: expected sha256 {expected}, got {actual} ({len(data)} bytes)",
            )
        )
    raise FetchError(f"could not fetch {name}; tried:\n" + "\n".join(map(str, attempts)))


def fetch_all(params: FetchParams, out: Path) -> None:
    # Everything is fetched and verified in memory first: one bad file writes nothing.
    verified = {name: fetch_file(name, params) for name in tqdm(FILES, desc="fetch", unit="file")}
    for name, data in verified.items():
        atomic.write_bytes(out / name, data)


def main(args) -> None:
    params = load_section(args.params, "fetch", FetchParams)
    fetch_all(params, Path(args.out))


def cli_main(argv=None) -> None:
    p = cli.parser("fetch", __doc__)
    p.add_argument("--out", required=True, type=Path, help="folder for the four idx files")
    cli.run("fetch", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
