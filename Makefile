# The two commands of the README: `make book` and `make test`.
# Each sets up what it needs: a virtual environment with the pinned
# requirements, this package, and a verified copy of Fashion-MNIST;
# `make test` also Debian's Chromium, for the test that drives the built book.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.requirements-installed

.PHONY: book test unit site nbval data browser setup outputs calibrate run full-runs clean

book: data
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

# Two pytest workers, one file each at a time: a quick notebook runs PyTorch on
# one thread, so two of them keep both cores of a 2-core machine busy.
WORKERS ?= 2
test: data browser
	$(PY) -m pytest --nbval -n $(WORKERS) --dist loadfile tests notebooks

# The helper package's tests, without the book.
unit: data
	$(PY) -m pytest tests --ignore=tests/test_site.py

# The built book in headless Chromium (tests/test_site.py builds it first).
site: setup browser
	$(PY) -m pytest tests/test_site.py

nbval: data
	$(PY) -m pytest --nbval -n $(WORKERS) --dist loadfile notebooks

# Re-run notebooks (quick profile, CPU) and store their outputs:
#   make outputs NOTEBOOKS=notebooks/06_lenet.ipynb
NOTEBOOKS ?= notebooks/*.ipynb
outputs: data
	$(PY) -m d2l_utils store-outputs $(NOTEBOOKS)

# Measure the nbval tolerances of notebooks whose outputs were just stored: each
# reruns under other numerics and seeds (see the README), about 7 times its run time.
#   make calibrate NOTEBOOKS=notebooks/06_lenet.ipynb
calibrate: data
	$(PY) -m d2l_utils calibrate $(NOTEBOOKS)

# Run notebooks under a profile into _build/runs (the committed ones stay as they are):
#   make run PROFILE=full DEVICE=cuda NOTEBOOKS=notebooks/06_lenet.ipynb PARAMS="-p EPOCHS 5"
PROFILE ?= quick
DEVICE  ?= auto
PARAMS  ?=
run: data
	$(PY) -m d2l_utils run $(NOTEBOOKS) --profile $(PROFILE) --device $(DEVICE) $(PARAMS)

# The full profile of every chapter on a CUDA GPU, in reading order; each run's record goes to
# results/full/cuda/ (the comparison chapter, run last, reads them):
#   make full-runs
full-runs: data
	$(PY) -m d2l_utils full-runs $(PARAMS)

data: setup
	$(PY) -m d2l_utils fetch-data

# Debian's Chromium and its driver, installed with apt-get when missing.
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  $(APT) install -y -q $(BROWSER_PACKAGES) || \
	  { $(APT) update -q && $(APT) install -y -q $(BROWSER_PACKAGES); }; \
	fi

setup: $(READY)

$(READY): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

clean:
	rm -rf _build
