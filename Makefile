# One command sets up and runs the main job; one sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo compare test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision are resolved together from the registry (no +cpu pin: runs fine on CPU)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# main job on the embedded digits (no download): every family once, one seed, shorter schedule
demo: $(STAMP)
	$(BIN)/vitkd compare --quick

# the full default suite (3 seeds per row): writes results/compare/digits/
compare: $(STAMP)
	$(BIN)/vitkd compare --readme README.md

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/taps.py

clean:
	rm -rf $(VENV) runs
