"""The champion's container image, built and run for real with podman.

From the Bento the end-to-end pipeline built (tests/conftest.py's pipeline_store), the
image is built as `make image` builds it (deploy/image/build.sh under the sandbox's
podman-sandbox.sh) and run as `make image-run` runs it: root filesystem read-only,
published on 127.0.0.1 only, removed (`podman rm -f`) whatever happens. Differential:
its answers to 200 test digits equal the evaluate stage's predictions; its /model_info
and labels name the registry's champion and the package stage's ONNX file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.serve import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = ROOT / "deploy" / "image" / "podman-sandbox.sh"
BUILD = ROOT / "deploy" / "image" / "build.sh"
DIGITS = 200


def sandbox(*args: str, env: dict | None = None, timeout: float = 120, check: bool = True):
    """A command under the sandbox's podman workarounds (deploy/image/podman-sandbox.sh)."""
    result = subprocess.run(
        [str(SANDBOX), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def inspect(image: str, template: str) -> str:
    return sandbox("podman", "image", "inspect", "--format", template, image).stdout.strip()


@pytest.fixture(scope="module")
def bento(pipeline_store: Path) -> dict:
    return json.loads((pipeline_store / "reports/package/bento.json").read_text())


@pytest.fixture(scope="module")
def image(pipeline_project, pipeline_store: Path, bento: dict) -> Iterator[dict]:
    """The image of the pipeline's Bento, built by build.sh; removed afterwards (the base
    image stays: it is the cache that spares the next build its debootstrap)."""
    env = {**pipeline_project.env, "PYTHON": sys.executable}
    name = f"localhost/mnist-classifier-test:{bento['bento'].split(':')[1]}"
    start = time.monotonic()
    sandbox("base", env=env, timeout=600)
    based = time.monotonic()
    bento_json = str(pipeline_store / "reports/package/bento.json")
    try:
        built = sandbox(str(BUILD), bento_json, name, env=env, timeout=1800)
        yield {
            "name": name,
            "base_s": based - start,
            "build_s": time.monotonic() - based,
            "build_log": built.stdout,
        }
    finally:
        sandbox("podman", "rmi", "--force", name, f"{name}-bentoml", check=False)


@pytest.fixture(scope="module")
def served(image: dict) -> Iterator[tuple[str, str]]:
    """The image running as `make image-run` runs it, on a free port of 127.0.0.1; yields
    its URL and container id. Named, so that it is removed even if it fails to start."""
    port = free_port()
    name = f"mnist-image-test-{os.getpid()}-{port}"
    try:
        container = sandbox(
            "podman", "run", "--detach", "--name", name, "--read-only",
            "-p", f"127.0.0.1:{port}:3000", image["name"],
        ).stdout.strip()  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            state = sandbox("podman", "inspect", "--format", "{{.State.Running}}", container)
            if state.stdout.strip() != "true" or time.monotonic() > deadline:
                logs = sandbox("podman", "logs", container, check=False)
                raise AssertionError(
                    f"the container did not get ready:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url, container
    finally:
        sandbox("podman", "rm", "--force", "--ignore", name, check=False)
        left = sandbox("podman", "ps", "--all", "--quiet", "--filter", f"name=^{name}$")
        assert left.stdout.strip() == "", f"container {name} was not removed"


def test_build_time_and_size(image: dict, capsys: pytest.CaptureFixture) -> None:
    """The slim step shrinks what `bentoml containerize` built; prints the figures."""
    size = int(inspect(image["name"], "{{.Size}}"))
    containerized = int(inspect(f"{image['name']}-bentoml", "{{.Size}}"))
    assert size < containerized
    with capsys.disabled():
        print(
            f"\nimage {image['name']}: {size / 1e6:.0f} MB (bentoml containerize's "
            f"{containerized / 1e6:.0f} MB); base image {image['base_s']:.0f} s "
            f"(0 when cached), build {image['build_s']:.0f} s: "
            f"{image['build_log'].strip().splitlines()[-1]}"
        )


def test_answers_equal_what_evaluate_computed(served, pipeline_store: Path, bento: dict):
    url, _ = served
    with np.load(pipeline_store / "data/split/test.npz", allow_pickle=False) as test:
        digits = test["images"][:DIGITS]  # (200, 28, 28) uint8
    predictions = pipeline_store / f"reports/candidates/{bento['candidate']}/predictions.npz"
    with np.load(predictions, allow_pickle=False) as reference:
        labels, probabilities = reference["labels"][:DIGITS], reference["probabilities"][:DIGITS]
    response = httpx.post(
        f"{url}/predict", json={"images": digits.reshape(DIGITS, -1).tolist()}, timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["labels"] == labels.tolist()
    np.testing.assert_allclose(np.array(answer["probabilities"]), probabilities, atol=1e-5)


def test_predict_image_and_the_page(served, pipeline_store: Path) -> None:
    url, _ = served
    with np.load(pipeline_store / "data/split/test.npz", allow_pickle=False) as test:
        digit = test["images"][0]
    png = io.BytesIO()
    Image.fromarray(digit).resize((140, 140)).save(png, format="PNG")
    response = httpx.post(
        f"{url}/predict_image",
        content=png.getvalue(),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    # The digit the model saw, sent back as an array: the same answer.
    again = httpx.post(f"{url}/predict", json={"images": [answer["preprocessed"]]}, timeout=30)
    assert again.json()["labels"] == [answer["label"]]
    np.testing.assert_allclose(again.json()["probabilities"][0], answer["probabilities"])
    page = httpx.get(f"{url}/ui/", timeout=10)
    assert page.status_code == 200 and "<canvas" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


def test_malformed_requests_get_a_json_4xx(served) -> None:
    url, _ = served
    short = httpx.post(f"{url}/predict", json={"images": [[0] * 783]}, timeout=10)
    assert short.status_code == 400 and "783" in short.json()["error"] + json.dumps(
        short.json()["detail"]
    )
    wrong_type = httpx.post(
        f"{url}/predict", content=b"0,0,0", headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert wrong_type.status_code == 415 and "error" in wrong_type.json()
    not_an_image = httpx.post(
        f"{url}/predict_image",
        content=b"not a png",
        headers={"Content-Type": "image/png"},
        timeout=10,
    )
    assert 400 <= not_an_image.status_code < 500
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200  # and it still serves


def test_model_info_and_labels_name_the_registry_champion(
    served, image: dict, pipeline_store: Path, bento: dict
) -> None:
    from mlflow.tracking import MlflowClient

    url, container = served
    info = httpx.post(f"{url}/model_info", json={}, timeout=10).json()
    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline_store / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(info["registry_model"], "champion")
    onnx = hashlib.sha256((pipeline_store / "reports/package/model.onnx").read_bytes())
    labels = json.loads(inspect(image["name"], "{{json .Labels}}"))
    assert info["registry_version"] == str(champion.version) == bento["registry_version"]
    assert labels["mnist-mlops.registry_version"] == str(champion.version)
    assert info["onnx_sha256"] == onnx.hexdigest() == labels["mnist-mlops.onnx_sha256"]
    assert labels["mnist-mlops.bento"] == bento["bento"]
    assert info["bentoml_tag"] == bento["model"] == labels["mnist-mlops.model"]
    # ...and the file the container serves is that ONNX file.
    name, version = bento["model"].split(":")
    served_file = f"/home/bentoml/bento/models/{name}/{version}/model.onnx"
    hashed = sandbox("podman", "exec", container, "sha256sum", served_file).stdout
    assert hashed.split()[0] == onnx.hexdigest()


def test_runs_as_non_root_with_only_what_serves(served, image: dict) -> None:
    _, container = served
    assert inspect(image["name"], "{{.Config.User}}") == "1034:1034"
    assert sandbox("podman", "exec", container, "id", "-u").stdout.strip() == "1034"
    listing = sandbox(
        "podman",
        "exec",
        container,
        "python",
        "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps([d.metadata['Name'].lower() for d in m.distributions()]))",
    ).stdout
    installed = set(json.loads(listing))
    assert {"bentoml", "onnxruntime", "numpy", "pillow"} <= installed
    assert not installed & {"torch", "pytest", "mlflow", "dvc", "onnx", "playwright"}
    shell = "command -v gcc || command -v git || ls /home/bentoml/bento/src/tests || true"
    found = sandbox("podman", "exec", container, "sh", "-c", shell).stdout
    assert found.strip() == ""  # no compilers, no git, no test code


def test_serves_from_a_read_only_root(served) -> None:
    """As in the Deployment: nothing writable but /tmp, where BENTOML_HOME is."""
    _, container = served
    read_only = sandbox(
        "podman", "inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container
    )
    assert read_only.stdout.strip() == "true"
    touch = sandbox("podman", "exec", container, "touch", "/home/bentoml/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    home = sandbox("podman", "exec", container, "sh", "-c", "ls $BENTOML_HOME").stdout.split()
    assert "prometheus_multiproc_dir" in home
