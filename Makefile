# The README's commands. Each one creates or refreshes .venv from the pins first (idempotent).
#   make course   build the shapes data set, run every notebook headless (quick mode), print a summary
#   make test     unit tests + `pytest --nbval` over notebooks/ (quick mode); what CI runs
#   make lab      open JupyterLab on the course
#   make browser-check  chapter 04's explorer in JupyterLab, driven in headless Chromium
#   make vdl-check  a quick `mrtdetr train --use_vdl`, its charts in VisualDL in headless Chromium
#   make checkpoint  retrain the shipped course checkpoint from scratch (about 2 h on 2 cores)
#   make train-10min  train tiny from scratch for 10 minutes as 2 processes; JSON line + curve
#   make book     the course as a static website (Jupyter Book 1.0) in build/book/_build/html
#   make book-check  every page of the book in headless Chromium: pictures, links, console
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

.PHONY: venv course test lab shapes lint clean-venv browser-check vdl-check checkpoint \
	early-snapshot train-10min book book-check

$(VENV)/.installed: pyproject.toml requirements-lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements-lock.txt -e ".[dev,vdl,openvino]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mrtdetr)" >/dev/null
	@touch $@

venv: $(VENV)/.installed

shapes: venv
	MRTDETR_QUICK=$(QUICK) $(PY) data_scripts/make_shapes.py

course: venv shapes
	MRTDETR_QUICK=$(QUICK) $(PY) notebooks/run_all.py --out build/course

# The interpreter's fault handler prints every thread's stack if a test crashes the process
# (a SIGSEGV in CI on 2026-12-02 was OpenVINO's signal stack: export/openvino.py).
PYTEST := MRTDETR_QUICK=1 PYTHONFAULTHANDLER=1 $(PY) -m pytest -q -p no:cacheprovider tests \
	notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900
test: venv shapes  # some tests score the quick shapes set (dataset/shapes)
	$(PYTEST)

# the two stages of the course recipe on 3000 shapes images (stage 2 starts from stage 1's
# best_model), then packaged into mrtdetr_lib/course/checkpoint
checkpoint: venv
	$(PY) data_scripts/make_shapes.py --out dataset/shapes_course --train 3000 --val 100
	rm -rf output/tiny_shapes_course output/tiny_shapes_course_hires
	MRTDETR_THREADS=2 $(VENV)/bin/mrtdetr train -c configs/tiny_shapes_course.yml --eval
	MRTDETR_THREADS=2 $(VENV)/bin/mrtdetr train -c configs/tiny_shapes_course_hires.yml --eval
	MRTDETR_THREADS=2 $(PY) -m mrtdetr_lib.course.weights

# chapter 03's live run starts from the 10-minute recipe stopped early (one process, ~4 min)
early-snapshot: venv
	MRTDETR_THREADS=2 $(PY) -m mrtdetr_lib.course.weights early

# the README's 10-minute recipe (mask AP ~0.55 on 2 cores); SEED=N, MINUTES=M to vary it
SEED ?= 0
MINUTES ?= 10
train-10min: venv
	mkdir -p output
	set -o pipefail; $(PY) bench/train_shapes.py --minutes $(MINUTES) --procs 2 \
		-c configs/tiny_shapes_10min.yml --output-dir output/tiny_shapes_10min \
		-o train.seed=$(SEED) | tee output/train_10min.jsonl
	$(PY) bench/plot_curves.py output/train_10min.jsonl -o output/train_10min.png

lab: venv
	$(VENV)/bin/jupyter lab notebooks

# Debian's chromium and chromedriver (installed once; sudo when not root), then the check in
# quick mode: run 04 in JupyterLab, move the score slider, screenshots in build/browser_check/
browser-check: venv shapes
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }
	MRTDETR_QUICK=1 $(PY) bench/browser_check.py

# the committed notebooks as they are (never re-executed), the API reference from the docstrings
# (autodoc imports mrtdetr_lib from this checkout), search; open build/book/_build/html/index.html
$(VENV)/.book-installed: $(VENV)/.installed pyproject.toml requirements-lock.txt
	$(PY) -m pip install -q --disable-pip-version-check -c requirements-lock.txt -e ".[book]"
	@touch $@

book: $(VENV)/.book-installed
	$(PY) book/stage.py --out build/book_src
	PYTHONPATH=$(CURDIR) $(VENV)/bin/jupyter-book build build/book_src --path-output build/book

# every page in headless Chromium: its pictures load, its links inside the site resolve, the
# console stays clean, search finds a class; installs chromium like browser-check
book-check: book
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }
	$(PY) bench/book_check.py --html build/book/_build/html
# the training dashboard: a quick `mrtdetr train --use_vdl`, then VisualDL's scalar page in
# headless Chromium (about a minute; not part of `make test`); screenshot in build/vdl_check/
vdl-check: venv shapes
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }
	$(PY) bench/vdl_check.py

lint: venv
	$(VENV)/bin/ruff check mrtdetr_lib tests data_scripts bench

clean-venv:
	rm -rf $(VENV)
