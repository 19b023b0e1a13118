# The README's two commands: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned everywhere: an unpinned resolve pulls CUDA wheels.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lch demo

# Two workers, one test file each at a time: a file's module fixtures (a trained model, a
# cluster) are built once, and one file's waits on Ray leave the other core to the other file.
PARALLEL := -n 2 --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest $(PARALLEL) -ra --durations=15

# The fast tier: everything but the end-to-end tests marked slow (CI runs them all).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PARALLEL) -ra --durations=10 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check platform pipelines serving tests bench

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .lch
