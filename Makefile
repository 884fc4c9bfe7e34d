# Two commands a newcomer runs: `make demo` (the main job on its defaults) and `make test`.
# Each creates .venv if missing; every pip call keeps torch on the CPU wheel (constraints.txt).
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m rlrm.train_agent

test: $(STAMP)
	WANDB_MODE=offline WANDB_SILENT=true $(VENV)/bin/python -m pytest -q -n auto --dist loadfile
	$(VENV)/bin/ruff check rlrm tests examples benchmarks
	$(VENV)/bin/lint-imports

lint: $(STAMP)
	$(VENV)/bin/ruff check rlrm tests examples benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
