# Two commands do everything on a fresh machine:
#   make demo   set up, then run the main job on the built-in default model
#   make test   set up, then run the whole test suite (CI runs this)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test setup clean

setup: $(VENV)/.installed

# torch first and pinned: any other resolution downloads a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,coreai]'
	touch $@

# The pipeline on the default model: run → export → lower (onnx, mlx, coreml, ane), each artifact gated as written
# (hrmc/demo.py): one line per command, every report in out/reports/, one summary at the end; exit 1 unless all pass.
demo: setup
	$(BIN)/python -m hrmc.demo --out out

# The default `pytest` skips the sudoku-size cases (marker `heavy`); this runs them too. Both run a test worker per
# core (pyproject's `-n auto`, pytest-xdist), one thread per worker (tests/conftest.py).
test: setup
	$(BIN)/python -m pytest -m "heavy or not heavy" --durations=25

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
