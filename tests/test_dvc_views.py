"""What DVC shows of this project: `dvc metrics show` is a row per candidate, the README's
DVC commands print within 120 columns as written, and `dvc plots show` writes a page of a
few charts with vega, vega-lite and vega-embed inline, so that it draws with no network
(tests/browser/test_dvc_plots.py draws it in Chromium)."""

from __future__ import annotations

import json
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from harness.project import ENABLED, Project, copy_project

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ROOT / ".dvc" / "plots"
WIDTH = 120  # a terminal's columns that every documented command must fit
LIBRARIES = re.compile(r"/\*! (vega(?:-lite|-embed)?) ([\d.]+), ")

# The README's DVC commands that compare runs, in the order a reader runs them; each must
# appear in its "### DVC" block exactly so.
README_COMMANDS = [
    "dvc metrics show",
    "dvc exp run -n lr01 -S train.candidates.mlp128.lr=0.01",
    "dvc exp show --only-changed --drop 'Created|[a-z]+(/[^:]*)?$|.*:(test|photo)' --precision 4",
    "dvc params diff",
    "dvc metrics diff --precision 4",
]


def widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def readme_dvc_block() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("### DVC", 1)[1].split("```sh", 1)[1].split("```", 1)[0]


class Sources(HTMLParser):
    """Every src/href a page's tags name, its script tags' src (None when inline) and its
    images' src."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str | None] = []
        self.images: list[str | None] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [found[a] or "" for a in ("src", "href") if a in found]
        if tag == "script":
            self.scripts.append(found.get("src"))
        if tag == "img":
            self.images.append(found.get("src"))


def remote(urls: list[str]) -> list[str]:
    return [url for url in urls if re.match(r"(https?:)?//", url.strip(), re.IGNORECASE)]


# ----- the repository's page template and plot definitions -----------------------------------


def test_the_page_template_inlines_the_libraries_dvc_would_load_from_a_cdn() -> None:
    from dvc_render.vega import VegaRenderer

    cdn = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\d.]+)", VegaRenderer.SCRIPTS))
    page = (PLOTS / "page.html").read_text()
    assert dict(LIBRARIES.findall(page)) == cdn and len(cdn) == 3
    for name in cdn:
        assert "Redistribution and use" in (PLOTS / f"LICENSE.{name}").read_text()
    # DVC fills {plot_divs}; {scripts} would bring its CDN tags back.
    assert "{plot_divs}" in page and "{scripts}" not in page
    sources = Sources(page)
    assert sources.scripts == [None, None, None] and not remote(sources.urls)


def test_dvc_config_and_dvc_yaml_name_the_page_and_templates_in_the_repository() -> None:
    from configobj import ConfigObj

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == PLOTS / "page.html"
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for plot in pipeline["plots"]:
        (definition,) = plot.values()
        template = PLOTS / f"{definition['template']}.json"
        assert "<DVC_METRIC_DATA>" in json.dumps(json.loads(template.read_text()))
    # The metrics are the scores alone; the pictures are outputs, not plots.
    declared: dict[str, list[str]] = {}
    for name, stage in pipeline["stages"].items():
        for key in ("metrics", "plots"):
            for entry in stage.get("do", stage).get(key, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                declared.setdefault(f"{name}.{key}", []).append(path)
    assert declared == {
        "summarize.metrics": ["${scores_dir}"],
        "photo_set.plots": ["${robustness_dir}/examples.png"],
    }


# ----- DVC on the pipeline's store ------------------------------------------------------------


@pytest.fixture(scope="module")
def plots_page(pipeline_project: Project, pipeline_store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dvc-plots")
    pipeline_project.run("dvc", "plots", "show", "-o", str(out))
    return out / "index.html"


@pytest.mark.slow
def test_dvc_metrics_show_is_a_row_per_candidate_within_120_columns(
    pipeline_project: Project, pipeline_store: Path
) -> None:
    env = {**pipeline_project.env, "COLUMNS": str(WIDTH)}
    shown = pipeline_project.run("dvc", "metrics", "show", env=env).stdout
    assert widest(shown) <= WIDTH, shown
    header, *rows = [line.split() for line in shown.splitlines()]
    assert header == ["Path", "multiply_adds", "photo_accuracy", "test_accuracy", "val_accuracy"]
    by_candidate = {Path(row[0]).stem: row[1:] for row in rows}
    assert sorted(by_candidate) == sorted(ENABLED)
    assert all(cell != "-" for row in rows for cell in row)
    summary = json.loads((pipeline_store / "reports/summary/summary.json").read_text())
    for name, (_, _, test, val) in by_candidate.items():
        assert float(val) == round(summary[name]["val_accuracy"], 5)
        assert float(test) == round(summary[name]["test_accuracy"], 5)


@pytest.mark.slow
def test_dvc_plots_show_writes_a_page_of_a_few_charts_that_loads_nothing_remote(
    plots_page: Path,
) -> None:
    page = plots_page.read_text()
    sources = Sources(page)
    assert not remote(sources.urls) and set(sources.scripts) == {None}
    assert len(LIBRARIES.findall(page)) == 3
    assert page.count("vegaEmbed('#") == len(
        yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    )
    # photo_set's picture of the kinds; the candidates' own pictures are files, not plots
    assert sources.images == ["static/workspace_reports_robustness_examples.png"]
    assert plots_page.stat().st_size < 2_000_000


@pytest.fixture(scope="module")
def readme_outputs(pipeline_project: Project, pipeline_store: Path, tmp_path_factory, mirror):
    """The README's commands in a copy of the store, committed as a user would have it."""
    project = copy_project(pipeline_project, tmp_path_factory.mktemp("readme") / "project", mirror)
    project.run("dvc", "exp", "remove", "--all-commits", check=False)  # other tests' names
    project.commit("the README's baseline")
    env = {**project.env, "COLUMNS": str(WIDTH)}
    outputs = {
        command: project.run(*shlex.split(command), env=env).stdout for command in README_COMMANDS
    }
    outputs["dvc exp show --json"] = project.run("dvc", "exp", "show", "--json").stdout
    return outputs


def test_the_compared_commands_are_the_readmes() -> None:
    block = readme_dvc_block()
    assert all(command in block for command in README_COMMANDS)


@pytest.mark.slow
def test_the_readmes_dvc_commands_rerun_one_candidate_and_print_within_120_columns(
    readme_outputs: dict,
) -> None:
    for command in README_COMMANDS:
        output = readme_outputs[command]
        print(f"$ {command}\n{output}")  # shown with pytest -rP
        if not command.startswith("dvc exp run"):  # a stage's own lines, not a table
            assert widest(output) <= WIDTH, f"{command}:\n{output}"
    # Changing one candidate's lr reruns its own stages and those that compare them, no other.
    ran = Project.stages_run(readme_outputs[README_COMMANDS[1]])
    assert ran[:2] == ["train@mlp128", "evaluate@mlp128"]
    assert set(ran) <= {
        "train@mlp128",
        "evaluate@mlp128",
        "robustness@mlp128",
        "record",
        "summarize",
        "promote",
        "package",
        "drift",
    }
    experiments = readme_outputs[README_COMMANDS[2]]
    assert (
        "lr01" in experiments
        and "0.01" in experiments
        and "mlp128.json:val_accuracy" in experiments
    )
    assert "train.candidates.mlp128.lr" in readme_outputs["dvc params diff"]
    # the experiment, its changed param and its scores, as a machine reads them
    shown = readme_outputs["dvc exp show --json"]
    assert "lr01" in shown and "0.01" in shown and "test_accuracy" in shown
    assert "reports/scores/mlp128.json" in readme_outputs["dvc metrics diff --precision 4"]
