import gzip
import shutil
import socket
import subprocess
import sys

import pytest

from pipeline.params import FetchParams
from pipeline.stages import fetch
from tests.conftest import ROOT

NAMES = list(fetch.FILES)


def closed_port_url() -> str:
    with socket.socket() as s:  # bind then close: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def params():
    return FetchParams(mirrors=[closed_port_url()], timeout_s=2, retries=0)


def test_fetch_from_local_mirror_verifies_and_writes(
    mirror, params, tmp_path, monkeypatch, raw_bytes
):
    monkeypatch.setenv(fetch.MIRROR_ENV, str(mirror))
    fetch.fetch_all(params, tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert (tmp_path / "raw" / name).read_bytes() == raw_bytes[name]


def test_plain_uncompressed_mirror_works_too(raw_bytes, params, tmp_path, monkeypatch):
    for name, data in raw_bytes.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setenv(fetch.MIRROR_ENV, str(tmp_path))
    assert fetch.fetch_file("t10k-labels-idx1-ubyte", params) == raw_bytes["t10k-labels-idx1-ubyte"]


@pytest.fixture
def corrupt_mirror(mirror, tmp_path):
    """A copy of the mirror whose test labels differ in one byte (valid gzip)."""
    bad = tmp_path / "bad-mirror"
    shutil.copytree(mirror, bad)
    labels = bytearray(gzip.decompress((bad / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    return bad


def test_checksum_mismatch_names_file_mirror_and_hashes(
    corrupt_mirror, params, tmp_path, monkeypatch
):
    monkeypatch.setenv(fetch.MIRROR_ENV, str(corrupt_mirror))
    out = tmp_path / "raw"
    with pytest.raises(fetch.FetchError) as error:
        fetch.fetch_all(params, out)
    message = str(error.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert str(corrupt_mirror) in message
    assert f"expected sha256 {fetch.FILES['t10k-labels-idx1-ubyte']}" in message
    assert "got " in message and "checksum mismatch" in message
    assert "127.0.0.1" in message  # the next source was tried and named as well
    assert not out.exists()  # nothing written, not even the three good files


def test_truncated_gzip_is_reported(mirror, params, tmp_path, monkeypatch):
    bad = tmp_path / "m"
    shutil.copytree(mirror, bad)
    data = (bad / "train-labels-idx1-ubyte.gz").read_bytes()
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])
    monkeypatch.setenv(fetch.MIRROR_ENV, str(bad))
    with pytest.raises(fetch.FetchError, match=r"(?s)train-labels-idx1-ubyte.*corrupt gzip"):
        fetch.fetch_file("train-labels-idx1-ubyte", params)


def test_unreachable_mirror_is_reported(params, monkeypatch):
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    with pytest.raises(fetch.FetchError, match=r"could not fetch .*\n  - http://127\.0\.0\.1:\d+"):
        fetch.fetch_file("t10k-labels-idx1-ubyte", params)


def test_cli_exits_1_with_message_and_no_output(corrupt_mirror, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"fetch:\n  mirrors: ['{closed_port_url()}']\n  timeout_s: 2\n  retries: 0\n")
    out = tmp_path / "raw"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.fetch", "--params", str(params), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", fetch.MIRROR_ENV: str(corrupt_mirror)},
    )
    assert result.returncode == 1
    assert result.stderr.count("Traceback") == 0
    assert "fetch: error: could not fetch t10k-labels-idx1-ubyte" in result.stderr
    assert not out.exists()
