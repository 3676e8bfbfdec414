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

# Every benchmark at the size its docs table came from (docs/benchmarks.md, decoding.md,
# serving.md, training.md): hours on 2 cores, bench_scale's 1M items most of them.
# bench_serve serves the demo's models (`make demo` first when they are missing);
# recbole_sasrec needs RecBole's own venv and gpu_check a CUDA device and Amazon Beauty
# (../shared), so each runs where it can and says so where it cannot.
bench: $(STAMP)
	test -f runs/ml-100k-holdout/models/cobra/model.safetensors || $(MAKE) demo
	$(BIN)/python benchmarks/bench_prepare_embed.py
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_train_eval.py
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_train.py --levers
	$(BIN)/python benchmarks/bench_scale.py
	if [ -x /tmp/recbole-venv/bin/python ]; then \
	  $(BIN)/python benchmarks/recbole_sasrec.py --recbole-python /tmp/recbole-venv/bin/python \
	    --recbole-budget-s 2700; \
	else echo "make bench: no /tmp/recbole-venv (docs/benchmarks.md): recbole_sasrec skipped"; fi
	if $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
	  $(BIN)/python benchmarks/gpu_check.py; \
	else echo "make bench: no CUDA device: gpu_check skipped (docs/training.md)"; fi

clean:
	rm -rf $(VENV) runs .cache site
