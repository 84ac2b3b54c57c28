"""Write page.html, the HTML template of `dvc plots show` (see ../config), with vega,
vega-lite and vega-embed inline, so that the page's plots render with no network.

DVC's own page loads these three from a CDN (``dvc_render.vega.VegaRenderer.SCRIPTS``);
the versions here are the ones it names. Each package comes from `npm pack`, is checked
against the registry's integrity hash, and gives its minified browser build and its
LICENSE (written beside as LICENSE.<package>). The page has no ``{scripts}`` placeholder,
so DVC adds no CDN tags of its own.

    python .dvc/plots/vendor.py    # needs npm and the npm registry; rewrites page.html
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (version, npm's dist.integrity, the browser build inside the tarball)
PACKAGES = {
    "vega": (
        "5.20.2",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
        "build/vega.min.js",
    ),
    "vega-lite": (
        "5.2.0",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
        "build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.18.2",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
        "build/vega-embed.min.js",
    ),
}

# DVC fills {refresh_tag} and {plot_divs}; vega plots come first, then pictures.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots: MNIST candidates</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; }
  body > div { margin-bottom: 2rem; }
  img { max-width: 100%; }
</style>
LIBRARIES
</head>
<body>
<h1>MNIST candidates</h1>
<p>Every enabled candidate in each chart (best validation accuracy first); click a legend
entry to pick one. Each candidate's pictures are files in <code>reports/</code> and
artifacts of its MLflow run.</p>
{plot_divs}
</body>
</html>
"""


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(name: str, version: str, expected: str, folder: Path) -> Path:
    """`npm pack name@version` into folder; the tarball, checked against ``expected``."""
    listed = subprocess.run(
        ["npm", "pack", "--silent", f"{name}@{version}"],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    tarball = folder / listed[-1]
    found = integrity(tarball.read_bytes())
    if found != expected:
        raise SystemExit(f"{name}@{version}: integrity {found}, expected {expected}")
    return tarball


def member(tarball: Path, path: str) -> str:
    with tarfile.open(tarball) as archive:
        return archive.extractfile(f"package/{path}").read().decode()


def script(name: str, version: str, licence: str, code: str) -> str:
    for forbidden in ("</script", "<!--", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        if forbidden in code:  # would end the tag early or be filled in by DVC
            raise SystemExit(f"{name}: its build contains {forbidden!r}")
    header = f"/*! {name} {version}, {licence}: .dvc/plots/LICENSE.{name} */"
    return f"<script>{header}\n{code}\n</script>"


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (version, expected, build) in PACKAGES.items():
            tarball = fetch(name, version, expected, Path(tmp))
            (HERE / f"LICENSE.{name}").write_text(member(tarball, "LICENSE"))
            licence = json.loads(member(tarball, "package.json"))["license"]
            scripts.append(script(name, version, licence, member(tarball, build)))
    page = PAGE.replace("LIBRARIES", "\n".join(scripts))
    (HERE / "page.html").write_text(page)
    print(f"wrote {HERE / 'page.html'} ({len(page.encode()):,} bytes)")


if __name__ == "__main__":
    main()
