# Two entry points for a fresh machine (see README):
#   make demo   -> creates .venv, trains GQ and the five baselines at 16 bits/token on the bundled images, writes the table
#   make test   -> creates .venv, runs the test suite
# Python 3.11 (hydra-core 1.3 and the local torch wheels are for 3.11); falls back to python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# torch-fidelity and lpips import torchvision; this is the pair that installs from the local wheel store
# and imports on our CPU-only machines (machine-notes §1).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test mutate venv clean-runs

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH; run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m gqbench.sweep -m +experiment=demo
	$(PY) -m gqbench.report --experiment demo

# one pytest worker per core: the slow tests are subprocess jobs and CLI runs that parallelise well; tests of one
# xdist_group (the SLURM ones share a cluster) run on one worker
test: venv
	$(PY) -m pytest -q -n auto --dist loadgroup tests

# Mutation testing (README, Contributing): mutmut over the modules listed in pyproject's [tool.mutmut], killed
# by the unit tests only; prints the score and every mutant no test killed. About 40 min on 2 cores.
mutate: venv
	$(PY) -m pip install -q -e '.[dev,mutate]'
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $$(nproc) > mutants.log 2>&1 || { tail -50 mutants.log; exit 1; }
	$(PY) tests/mutation_score.py --mutmut $(VENV)/bin/mutmut --min 90

clean-runs:
	rm -rf runs
