# The README's commands. Each one creates or refreshes .venv from the pins first (idempotent).
#   make course   build the shapes data set, run every notebook headless (quick mode), print a summary
#   make test     unit tests + `pytest --nbval` over notebooks/ (quick mode); what CI runs
#   make lab      open JupyterLab on the course
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
QUICK ?= 1
# paddle's C++ logging goes to stderr, which nbval compares; polygraphy must not pip-install.
export GLOG_minloglevel := 2
export POLYGRAPHY_AUTOINSTALL_DEPS := 0
export PYTHONDONTWRITEBYTECODE := 1
export MPLBACKEND := Agg

.PHONY: venv course test lab shapes lint clean-venv

$(VENV)/.installed: pyproject.toml requirements-lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements-lock.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mrtdetr)" >/dev/null
	@touch $@

venv: $(VENV)/.installed

shapes: venv
	MRTDETR_QUICK=$(QUICK) $(PY) data_scripts/make_shapes.py

course: venv shapes
	MRTDETR_QUICK=$(QUICK) $(PY) notebooks/run_all.py --out build/course

test: venv
	MRTDETR_QUICK=1 $(PY) -m pytest -q -p no:cacheprovider tests notebooks --nbval \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900

lab: venv
	$(VENV)/bin/jupyter lab notebooks

lint: venv
	$(VENV)/bin/ruff check mrtdetr_lib tests data_scripts bench

clean-venv:
	rm -rf $(VENV)
