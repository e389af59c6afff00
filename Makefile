# One command sets up a fresh machine and runs a job:
#   make demo   -> virtual environment + the MLP demo with the monitors attached
#   make test   -> virtual environment + the whole test suite (what .ci/run calls)
# torch is installed first and pinned through constraints.txt so that nothing
# pulls a different (CUDA) build. GPU users: `make TORCH_SPEC='torch==X.Y.Z' ...`
# or install your own torch into .venv first and keep the pin out of the way.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) examples/mlp.py --no-progress-bar --summary-file runs/mlp/summary.txt

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) benchmarks/ntk.py

clean:
	rm -rf $(VENV) runs .pytest_cache
