"""The docs' commands run as written: every file a `curl` example sends is in the
repository, and the blocks marked runnable run, from the repository root, against a real
`bentoml serve` of the Bento the pipeline packaged (tests/conftest.py's pipeline_store).

A runnable block is a ```sh fence right after the HTML comment `<!-- runnable: serve ... -->`
(invisible on the rendered page). Its commands talk to a server at 127.0.0.1:3000, which the
test replaces with its own server's port; each must exit 0, and each prediction's answer
must name a digit.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from harness.serve import bentoml_serve

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "docs" / "serving.md", REPO / "docs" / "deployment.md"]
RUNNABLE = re.compile(r"<!-- runnable: serve\b.*?-->\s*\n```sh\n(.*?)```", re.DOTALL)
CODE_BLOCK = re.compile(r"```(?:sh|bash)\n(.*?)```", re.DOTALL)
DOCUMENTED = "127.0.0.1:3000"  # where the docs' commands find the service


def commands(block: str) -> list[str]:
    """The shell commands of a code block: lines joined at a trailing backslash, blank
    lines and comment lines left out."""
    found, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            found.append(command)
    return found


def runnable_commands(page: Path) -> list[str]:
    return [command for block in RUNNABLE.findall(page.read_text()) for command in commands(block)]


def sent_files(command: str) -> list[str]:
    """The local files a curl command sends: `@path` of --data-binary, -d, -F and the like."""
    if not command.startswith("curl "):
        return []
    words = shlex.split(command, comments=True)
    return [match for word in words for match in re.findall(r"@([^;,\s]+)", word)]


def names_a_digit(answer: object) -> bool:
    """A /predict_image answer ({"label": d}) or a /predict answer ({"labels": [d, ...]})."""
    if not isinstance(answer, dict):
        return False
    labels = answer.get("labels", [answer.get("label")])
    return bool(labels) and all(label in range(10) for label in labels)


# ----- without a server ----------------------------------------------------------------------


def test_the_readme_has_runnable_examples_of_the_image_endpoint() -> None:
    examples = runnable_commands(REPO / "README.md")
    assert any("/predict_image" in command and ".png" in command for command in examples)
    assert any("/predict_image" in command and ".jpg" in command for command in examples)
    assert all(DOCUMENTED in command for command in examples), examples


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_file_a_curl_example_sends_is_in_the_repository(page: Path) -> None:
    sent = [
        name
        for block in CODE_BLOCK.findall(page.read_text())
        for command in commands(block)
        for name in sent_files(command)
    ]
    missing = [name for name in sent if not (REPO / name).is_file()]
    assert not missing, f"{page.name} sends files that the repository does not have: {missing}"


def test_curl_examples_show_their_errors() -> None:
    """`curl -s` alone hides a missing file (exit 26, no message) and a 4xx's body."""
    quiet = [
        command
        for page in PAGES
        for block in CODE_BLOCK.findall(page.read_text())
        for command in commands(block)
        if command.startswith("curl ") and not {"-sS", "--fail-with-body"} <= set(command.split())
    ]
    assert not quiet, quiet


# ----- against the packaged Bento --------------------------------------------------------------


@pytest.fixture(scope="module")
def bento_server(pipeline_project, pipeline_store: Path, tmp_path_factory) -> Iterator[str]:
    """`bentoml serve` of the Bento in reports/package/bento.json, on a BentoML home of its
    own that links the project's store (a server empties its home's metrics folder)."""
    bento = json.loads((pipeline_store / "reports/package/bento.json").read_text())
    project_home = Path(pipeline_project.env["BENTOML_HOME"])
    home = tmp_path_factory.mktemp("examples-home")
    for store in ("bentos", "models"):
        (home / store).symlink_to(project_home / store, target_is_directory=True)
    env = {**pipeline_project.env, "BENTOML_HOME": str(home), "MNIST_WORKERS": "1"}
    log_path = tmp_path_factory.mktemp("examples-serve") / "serve.log"
    with bentoml_serve(bento["bento"], env=env, cwd=pipeline_store, log_path=log_path) as served:
        yield served.url


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [page for page in PAGES if runnable_commands(page)], ids=lambda page: page.name
)
def test_runnable_examples_run_as_written(page: Path, bento_server: str) -> None:
    port = urlsplit(bento_server).port
    for command in runnable_commands(page):
        result = subprocess.run(
            ["bash", "-c", command.replace(DOCUMENTED, f"127.0.0.1:{port}")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{command}\nexit {result.returncode}: {result.stderr}"
        if re.search(r"/predict(_image)?\b", command):
            answer = json.loads(result.stdout)
            assert names_a_digit(answer), f"{command}\n{result.stdout[:300]}"


@pytest.mark.slow
def test_the_bento_serves_the_api_page_that_links_the_draw_a_digit_page(bento_server: str) -> None:
    page = httpx.get(f"{bento_server}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="./ui/"' in page.text and "googletagmanager" not in page.text
    assert httpx.get(f"{bento_server}/ui/api.js", timeout=10).status_code == 200
