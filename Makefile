VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
# Material for MkDocs prints a notice about MkDocs 2.0 on every build; the build is 1.x.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

.PHONY: install test test-slow test-gpu lint format demo bench clean docs docs-install docs-serve

install: $(STAMP)

$(STAMP): pyproject.toml tools/install.sh
	bash tools/install.sh

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

test: lint
	$(PY) -m pytest

test-slow: $(STAMP) $(DOCS_STAMP)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "test-slow: chromium not installable; the report-rendering test will skip"
	$(PY) -m pytest -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

demo: $(STAMP)
	$(VENV)/bin/deqkit demo

bench: $(STAMP)
	$(PY) -m pip install -q torchdeq==0.1.0 || echo "bench: torchdeq not installable; its columns are skipped"
	$(PY) benchmarks/solver_bench.py --threads 1
	$(PY) benchmarks/memory_bench.py

# The documentation site (mkdocs.yml, docs/): built with warnings as errors into site/.
docs-install: $(DOCS_STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(DOCS_STAMP)
	$(MKDOCS) build --strict --site-dir site

docs-serve: $(DOCS_STAMP)
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8000

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
