# `make demo` and `make test` each set up .venv on first use (CPU torch pinned), then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test lint format bench clean gguf-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pin torch first: an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmlab demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# llama.cpp runs lmlab's GGUF export (tests/test_gguf_llama_cpp.py). llama-cpp-python builds
# llama.cpp from source, many minutes on a small machine: the wheel is built once into .whl/
# and reused. Not part of `make test`. Decode speed: $(BIN)/python bench/bench_gguf_decode.py
gguf-check: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  ls .whl/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	    CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip wheel --no-deps -w .whl llama-cpp-python; \
	  $(BIN)/pip install -q "$$(ls .whl/llama_cpp_python-*.whl | tail -1)"; }
	$(BIN)/python -m pytest -q tests/test_gguf_llama_cpp.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
