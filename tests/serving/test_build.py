"""`bentoml build -f serving/bentofile.yaml` works offline and packs the service code and a
reference to the model, and nothing of the test harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bentoml_build_packs_the_service_and_its_model(model_tag: str, bentoml_home: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "MNIST_MODEL_TAG": model_tag}
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "build",
        "-f",
        "serving/bentofile.yaml",
        "-o",
        "tag",
        ".",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = bentoml_home / "bentos" / name / version
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "serving.service:MNISTClassifier"
    assert [m["tag"] for m in manifest["services"][0]["models"]] == [model_tag]
    packed = {path.name for path in (bento / "src" / "serving").iterdir()}
    assert {"service.py", "preprocess.py", "batching.py", "guard.py", "contract.py"} <= packed
    assert not (bento / "src" / "tests").exists()  # the harness (and torch) stay out
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "torch" not in requirements
