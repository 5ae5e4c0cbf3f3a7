# One command sets up and runs the main job; one sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# the oldest versions vitkd declares (constraints/oldest.txt), on the oldest Python it declares when present
PY_OLDEST ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && echo $$p && break; done)
VENV_OLDEST := .venv-oldest
STAMP_OLDEST := $(VENV_OLDEST)/.installed

.PHONY: setup demo demo-digits quick-results quick-results-digits isa-spread isa-spread-digits compare test test-oldest bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision are resolved together from the registry (no +cpu pin: runs fine on CPU)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# main job: the Fashion-MNIST quick suite (`vitkd demo`: the data got first when missing, e.g. from Debian's
# package as root; without them and a way to get them, one line says so and the digits demo runs). Writes
# runs/quick/fmnist-quick/ (untracked) and checks each row against the committed reference and its band
demo: $(STAMP)
	$(BIN)/vitkd demo

# the digits demo (embedded data, nothing to get): writes runs/quick/digits-quick/
demo-digits: $(STAMP)
	$(BIN)/vitkd demo --digits

# re-make a committed quick reference (results/compare/fmnist-quick/, results/compare/digits-quick/): only on purpose
quick-results: $(STAMP)
	$(BIN)/vitkd compare configs/compare/fmnist.yaml --quick --out results/compare/fmnist-quick

quick-results-digits: $(STAMP)
	$(BIN)/vitkd compare --quick --out results/compare/digits-quick

# a quick suite and every zoo entry under three CPU instruction sets: the demos' bands
# (Fashion-MNIST: about 60 min; digits, with the behaviour record: about 25 min)
isa-spread: $(STAMP)
	$(BIN)/python tools/isa_spread.py --suite configs/compare/fmnist.yaml --parts quick zoo

isa-spread-digits: $(STAMP)
	$(BIN)/python tools/isa_spread.py

# the full default suite (5 seeds per row): writes results/compare/digits/, then the README's results block
# (vitkd report: the main table with the methods suite's rows, the studies, the claims; from results/compare/)
compare: $(STAMP)
	$(BIN)/vitkd compare
	$(BIN)/vitkd report

test: $(STAMP)
	$(BIN)/python -m pytest -q

$(STAMP_OLDEST): pyproject.toml constraints/oldest.txt
	@test -n "$(PY_OLDEST)" || { echo "test-oldest: no Python 3.10 found (set PY_OLDEST=...)"; exit 2; }
	$(PY_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/pip install -q -c constraints/oldest.txt -e ".[dev]"
	touch $(STAMP_OLDEST)

# the same tests against the oldest declared dependency versions (CI runs both)
test-oldest: $(STAMP_OLDEST)
	$(VENV_OLDEST)/bin/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/taps.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) runs
