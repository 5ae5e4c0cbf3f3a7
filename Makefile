# One command sets up and runs the main job; one sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision are resolved together from the registry (no +cpu pin: runs fine on CPU)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# main job on the embedded digits (no download)
demo: $(STAMP)
	$(BIN)/vitkd train configs/digits/vit_baseline.yaml --out runs/vit_baseline --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/taps.py

clean:
	rm -rf $(VENV) runs
