# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs mcaas-search, runs the search on the built-in demo
#   make serve  the same set-up, then the web page and API on http://127.0.0.1:8000/
#   make test   creates .venv, installs mcaas-search with its test extras, runs the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision first, pinned to the versions this machine serves from disk, so pip
# never resolves a newer torch (and gigabytes of CUDA wheels) for the looser range in pyproject.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo serve test install clean gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mcaas-search --target size --max-drop 1

serve: $(STAMP)
	$(BIN)/mcaas-search serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The GPU path (train, try and a Ray search on CUDA against the CPU): on a machine with a GPU only.
gpu-check: $(STAMP)
	$(BIN)/python -m search.bench.gpu_check --out gpu_check.json

clean:
	rm -rf $(VENV) studies/demo* .pytest_cache
