# Two commands for a newcomer: `make demo` and `make test`. Both build .venv themselves.
# `make docs` builds the documentation site (site/index.html); `make test` builds it too.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := -c constraints.txt $(if $(WHEELS),--find-links $(WHEELS))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test docs bench clean browser

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_FLAGS) -e '.[dev,ray,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sidrec bench --profile demo

test: $(STAMP) browser docs
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or a missing
# page or API reference fails (not with --quiet: that hides the warnings strict counts).
# It renders the committed pages and never trains.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# tests/test_serve_explorer.py drives Debian's Chromium through Selenium; CI runs as root.
browser:
	@command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "make: no chromedriver (apt-get install chromium chromium-driver);" \
	    "the explorer's browser test will skip"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# bench_scale.py (10k -> 1M items, about an hour on 2 cores) runs at its 10k size here;
# run it alone for the whole curve (docs/benchmarks.md, "Scale: 10k to 1M items").
bench: $(STAMP)
	for script in benchmarks/bench_*.py; do \
		if [ $$script = benchmarks/bench_scale.py ]; then set -- --max-items 10000 --work runs/scale-10k --plot runs/scale-10k/scale.png; else set --; fi; \
		$(BIN)/python $$script "$$@" || exit 1; done

clean:
	rm -rf $(VENV) runs .cache site
