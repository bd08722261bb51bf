# Two commands do all the set-up: `make demo` (the main job) and `make test`.
# Both build .venv on first use. Where no NVIDIA GPU is present the CPU build of
# torch 2.13.0 is pinned first; the package itself only asks for a torch range.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: demo test test-slow lint format bench clean-venv

$(BIN)/markov-lens: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the default (CUDA) torch"; \
	else \
		echo "No GPU: pinning the CPU build torch==2.13.0"; \
		$(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: $(BIN)/markov-lens
	$(BIN)/markov-lens reproduce tying --quick --out $(OUT)

test: $(BIN)/markov-lens
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/markov-lens
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/markov-lens
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/markov-lens
	$(BIN)/markov-lens bench --quick

clean-venv:
	rm -rf $(VENV)
