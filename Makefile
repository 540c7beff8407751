# symopt: the two commands a newcomer runs are `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs (pinned optional extras).

PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip --disable-pip-version-check -q

.PHONY: demo test test-core bench verify generate lint clean

$(PYTHON):
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools

$(VENV)/.demo-installed: pyproject.toml | $(PYTHON)
	$(PIP) install -e '.[train]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PYTHON)
	$(PIP) install -e '.[test,train,torch,optax,references]'
	touch $@ $(VENV)/.demo-installed

## demo: derive, generate, verify and run a few rules on a small problem
demo: $(VENV)/.demo-installed
	$(PYTHON) -m symopt demo

## test: the whole suite, torch and Optax parity included (never skipped here), and 1000
## hypothesis examples per rule in the property tests (derandomized: the same examples every run)
test: $(VENV)/.test-installed
	SYMOPT_REQUIRE_REFERENCES=1 SYMOPT_PROPERTY_EXAMPLES=1000 $(PYTHON) -m pytest -q -p no:cacheprovider

## test-core: the suite with only the core dependencies' tests that need no extras
test-core: $(VENV)/.demo-installed
	$(PIP) install -e '.[test]'
	$(PYTHON) -m pytest -q -p no:cacheprovider

## bench: the benchmark suite (writes benchmarks/results.md and a PNG)
bench: $(VENV)/.test-installed
	$(PYTHON) -m symopt bench

verify: $(VENV)/.demo-installed
	$(PYTHON) -m symopt verify

generate: $(VENV)/.demo-installed
	$(PYTHON) -m symopt generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
