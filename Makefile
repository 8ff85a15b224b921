# Two commands do everything: `make run` (the main job, end to end) and `make test`; `make docs` builds
# the documentation site into site/.
# Each creates .venv and installs the exact versions of requirements.lock on first use.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/quickstart.yaml
ARGS ?=
BIN := $(VENV)/bin

.PHONY: install run test docs bench clean

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# --no-deps: the lock file is the whole dependency closure, so nothing unpinned sneaks in.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# the run, then its report: the K=20 table on the terminal, curves and funnel in runs/<name>/report/
run: install
	$(BIN)/coldllm run --config $(CONFIG) $(ARGS)
	$(BIN)/coldllm report --config $(CONFIG) $(ARGS)

test: install
	$(BIN)/python -m pytest

# the reference pages written again from the code (settings, the service's API), then the site, strict:
# a broken link, a missing anchor or a page left out of mkdocs.yml's nav fails the build
docs: install
	$(BIN)/python docs/gen_reference.py
	$(BIN)/mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/baselines.py
	$(BIN)/python benchmarks/funnel.py

clean:
	rm -rf $(VENV) runs cache site
