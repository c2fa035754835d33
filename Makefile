# Everything a newcomer needs: `make serve` and `make test` (both create .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MAR := model_store/inspection.mar
SOURCES := $(shell find handlers -name '*.py' -not -path '*/__pycache__/*' -not -path 'handlers/client/*' -not -path 'handlers/evaluation/*' -not -path 'handlers/testing/*')

.PHONY: venv serve test lint mar train train-vit clean java-check viewer browser bench eval soak

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

java-check:
	@command -v java >/dev/null 2>&1 || { echo "TorchServe needs Java 11 or newer: install e.g. openjdk-17-jre-headless" >&2; exit 1; }
	@java -version 2>&1 | awk -F'"' '/version/ { split($$2, v, "."); major = (v[1] == "1") ? v[2] : v[1]; if (major + 0 < 11) { print "TorchServe needs Java 11 or newer, found " $$2 > "/dev/stderr"; exit 1 } }'

$(MAR): $(STAMP) $(SOURCES) handlers/inspection/inspection.pth
	$(PY) -m handlers.archive inspection --export-path model_store

mar: $(MAR)

# What `make serve` serves: name=file.mar pairs from model_store/, e.g.
#   make serve MODELS="inspection=inspection.mar resnet50=resnet50.mar"
MODELS ?= inspection=inspection.mar
# Another config.properties (e.g. other ports, for a second server next to this one).
TS_CONFIG ?= config.properties

# TorchServe runs in its own process group (setsid); Ctrl-C (or a TERM) stops that whole
# group with SIGTERM, as TorchServe's own shutdown expects, instead of a Python traceback.
serve: $(STAMP) java-check $(MAR)
	@echo "TorchServe serving $(MODELS) with $(TS_CONFIG) (Ctrl-C stops it). In another terminal, e.g.:"
	@echo "  curl -X POST http://127.0.0.1:8080/predictions/inspection -T handlers/inspection/samples/scratch.png"
	@setsid $(VENV)/bin/torchserve --start --foreground --ncs --model-store model_store --ts-config $(TS_CONFIG) \
	    --models $(MODELS) & server=$$!; \
	  trap 'kill -TERM -$$server 2>/dev/null; while kill -0 -$$server 2>/dev/null; do sleep 0.2; done; \
	    echo "TorchServe stopped."; exit 0' INT TERM; \
	  wait $$server

test: $(STAMP) java-check browser
	$(PY) -m pytest

# Lint, format and type checks over the code, tests and benchmarks (settings in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Debian's Chromium for the viewer's browser test (Playwright's own download can't work
# here). Installed when missing and apt is usable; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: the viewer test will skip (install: apt-get install -y chromium)"

viewer:
	@echo "Viewer on http://127.0.0.1:8090/ (TorchServe must be running: make serve)"
	python3 -m http.server --bind 127.0.0.1 8090 --directory handlers/viewer

# Benchmarks (what an explanation costs): writes benchmarks/RESULTS.md; `--quick` for a smoke run.
bench: $(STAMP) java-check
	$(PY) -m benchmarks

# Evaluation report (are the explanations right?): writes docs/evaluation.md and docs/images/evaluation/.
eval: $(STAMP)
	$(PY) -m handlers.evaluation

# Bounded soak against a real TorchServe (slow; not part of make test).
soak: $(STAMP) java-check
	$(PY) -m pytest -m slow -s tests/integration/test_faults_and_soak.py

train: $(STAMP)
	$(PY) -m handlers.inspection.train --out handlers/inspection/inspection.pth

# The small ViT that docs/evaluation.md section 5 tests Grad-CAM on (about 1.5 minutes on 2 cores).
train-vit: $(STAMP)
	$(PY) -m handlers.inspection.vit --out handlers/inspection/inspection_vit.pth

clean:
	rm -rf model_store/*.mar logs .pytest_cache
