# Every target bootstraps .venv itself; it is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run demo test bench bench-gpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job: a quick sweep, offline, on the embedded defaults (local Ray, ./mlflow.db, ./wcrnn_runs).
## A second `make run` starts over: it moves the previous quickstart's Ray state aside first.
run: $(STAMP)
	@if [ -d wcrnn_runs/quickstart ]; then mv wcrnn_runs/quickstart wcrnn_runs/quickstart-$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/wcrnn sweep run sweeps/quickstart.yaml

## One training run without Ray: a rotational WCRNN on the offline sMNIST digits (about 2 minutes).
demo: $(STAMP)
	$(BIN)/wcrnn train --set task.name=smnist --set task.source=mnist5k --set task.limit_train=1024 \
		--set task.limit_eval=500 --set model.residual=rotational --set model.r=0.99 --set model.gamma=0.02 \
		--set training.lr=0.01 --set training.batch_size=16 --set training.epochs=2 \
		--set training.lyapunov.at_end=true --set training.lyapunov.ons_interval=4

## The whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks (16-24 minutes on 2 cores): writes benchmarks/results/benchmark.{json,md}; not part of the tests.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

## On a machine with a GPU (a few minutes): the CUDA tests, then the training step, the Lyapunov spectrum
## and trials per GPU on it, without the CPU rows: writes benchmarks/results/gpu/benchmark.{json,md}.
bench-gpu: $(STAMP)
	$(BIN)/python -m pytest tests/test_cuda.py
	$(BIN)/python benchmarks/run.py --only recurrence,lyapunov,gpu --devices cuda --output benchmarks/results/gpu

clean:
	rm -rf $(VENV) .pytest_cache
