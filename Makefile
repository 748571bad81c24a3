# `make test` sets up a virtual environment on a fresh machine and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip install -q -c constraints.txt

.PHONY: test install
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(PIP) -e '.[test]'
	touch $@
