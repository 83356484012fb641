# The two commands a new user types: `make run` (local sandbox) and `make test` (every test).
# Each creates or reuses .venv and installs what it needs by itself. `make check` is the inner
# loop: lint and every test that starts no process (docs/development.md, "Which command when").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test check lint demo package mutation bench clean

# Keep bytecode (in __pycache__, which git ignores) even where the environment says not to
# (PYTHONDONTWRITEBYTECODE): otherwise each test worker, and each sandbox or CLI process a test
# starts, compiles the project again, and pytest rewrites every test module's asserts again.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the Python packages of requirements-dev.txt into $(VENV): about 40 s the first"
	@echo "time (pip prints nothing meanwhile); again only when a requirements file changes."
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@echo "Installed."
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m sandbox.run

# Two pytest-xdist workers per core (at most 8): a test often waits (on a subprocess, a
# server, a poll), and the other worker on its core runs meanwhile. Each worker on moto server
# starts its own, and each one with end-to-end tests its own sandbox; worksteal hands each
# worker a contiguous share (so the end-to-end tests keep to few sandboxes) and lets a worker
# that is done take from the others. TEST_WORKERS=0 runs in this process alone.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(8, 2 * (os.cpu_count() or 1)))')
XDIST := -n $(TEST_WORKERS) --dist worksteal

# Every test; the 15 slowest are listed at the end, so a slow new test shows the day it lands.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(XDIST) --durations=15

# Lint and every test that starts no process (no moto server, no sandbox, no subprocess).
check: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not process" $(XDIST) --durations=5

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m sandbox.demo

# Build the Lambda packages of a stage (STAGE=dev by default) into build/<stage>, print their
# sizes, fail on a dependency chalice could not install or on more than 10 MB zipped. Refuses a
# deployed stage without VPC settings (python -m ops config fill-vpc) unless it opts out.
package: $(STAMP)
	$(PY) -m ops.package --stage $(if $(STAGE),$(STAGE),dev)

# Mutation testing of the validation modules (tools/mutation.py); not part of `make test`.
# MODULES=... narrows it to some modules; JOBS sets the parallel runs (2 by default).
mutation: $(STAMP)
	$(PY) -m tools.mutation --jobs $(if $(JOBS),$(JOBS),2) $(MODULES)

# The callback's cost next to a minimal correct handler, warm and cold, and the AWS calls of each
# operation, against a zero-latency local stand-in (bench/); not part of `make test`. Exits 1
# over budget. ROUNDS=, WARM_CALLS=, COLD_RUNS= change the sample sizes.
bench: $(STAMP)
	$(PY) -m bench $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(WARM_CALLS),--warm-calls $(WARM_CALLS)) $(if $(COLD_RUNS),--cold-runs $(COLD_RUNS))

# Everything make creates: the venv, tool caches, the sandbox's logs, packages and test artifacts.
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .sandbox build
