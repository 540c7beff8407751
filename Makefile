# symopt: the two commands a newcomer runs are `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs (pinned optional extras).

PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip --disable-pip-version-check -q

.PHONY: demo test test-core bench verify generate report report-screenshot browser lint clean

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

## browser: Debian's chromium for the report's browser test, installed when running as root (CI)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium fonts-dejavu-extra) >/dev/null 2>&1 || echo "could not install chromium: tests/test_report_browser.py cannot run"; \
	  else echo "chromium not installed (and not root): tests/test_report_browser.py will skip or, under CI, fail"; fi

## test: the whole suite, torch and Optax parity included (never skipped here), the report in a
## headless browser, and 1000 hypothesis examples per rule in the property tests (derandomized)
test: $(VENV)/.test-installed browser
	SYMOPT_REQUIRE_REFERENCES=1 SYMOPT_PROPERTY_EXAMPLES=1000 $(PYTHON) -m pytest -q -p no:cacheprovider

## test-core: the suite with only the core dependencies' tests that need no extras
test-core: $(VENV)/.demo-installed
	$(PIP) install -e '.[test]'
	$(PYTHON) -m pytest -q -p no:cacheprovider

## bench: the benchmark suite (writes benchmarks/results.md and a PNG)
bench: $(VENV)/.test-installed
	$(PYTHON) -m symopt bench

## report: every rule, schedule, transform, loss and activation as HTML pages (site/index.html)
report: $(VENV)/.demo-installed
	$(PYTHON) -m symopt report --all -o site/

## report-screenshot: docs/report-adam.png, the Adam page in headless chromium (README)
report-screenshot: $(VENV)/.demo-installed browser
	$(PYTHON) -m symopt report adam -o $(VENV)/report-adam.html
	chromium --headless --disable-gpu --hide-scrollbars $$( [ "$$(id -u)" = 0 ] && echo --no-sandbox ) \
	  --window-size=1100,1700 --screenshot=docs/report-adam.png $(VENV)/report-adam.html 2>/dev/null

verify: $(VENV)/.demo-installed
	$(PYTHON) -m symopt verify

generate: $(VENV)/.demo-installed
	$(PYTHON) -m symopt generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
