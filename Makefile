VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-gpu lint format demo bench clean

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

test-slow: $(STAMP)
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

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
