# Quick start:
#   make demo       # make .venv, install, run the whole pipeline on the bundled corpus
#   make test       # make .venv, install, run the fast tests (TensorFlow, no `slow` ones)
#   make test-all   # make .venv, install, run every test on both Keras backends (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# The `hub` extra of pyproject.toml (tensorflow_hub, to load `export-hub` SavedModels) is
# installed without its dependencies: tf-keras requires the `tensorflow` distribution,
# which pip would install over tensorflow-cpu. tf-keras must match TensorFlow's minor.
TF_MINOR := import tensorflow as tf; print(tf.__version__.rsplit(".", 1)[0])

.PHONY: install demo test test-all test-tensorflow test-jax lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[jax,slurm,dev]"
	$(BIN)/python -m pip install --quiet --no-deps "tensorflow-hub>=0.16.1,<0.17" \
		"tf-keras~=$$(TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -c '$(TF_MINOR)').0"
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES)

# The fast suite: TensorFlow only, without the tests marked `slow` (Snakemake runs, SLURM,
# training runs, the demo's quality): 3.5 minutes on 2 idle CPU cores. `make test-all` runs
# everything, on TensorFlow and then on JAX.
test: install
	KERAS_BACKEND=tensorflow $(BIN)/pytest -m "not slow"

# Everything, what .ci/run runs: every test on TensorFlow, then the Keras tests on JAX.
test-all: test-tensorflow test-jax

test-tensorflow: install
	KERAS_BACKEND=tensorflow $(BIN)/pytest

# The model tests again on the second backend.
test-jax: install
	KERAS_BACKEND=jax $(BIN)/pytest -m keras

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf results logs .snakemake
