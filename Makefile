# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# Offline: make run COCO128=../shared/data/coco128.zip MODEL=yolov8n.yaml
COCO128 ?=
MODEL ?=
OVERRIDES := $(if $(COCO128),-S prepare.source=$(COCO128)) $(if $(MODEL),-S train.model=$(MODEL))

.PHONY: help setup run rollback test lint ui clean-venv

help:
	@echo "make run    set up .venv, run the grid of grid.yaml through DVC's queue, compare the runs,"
	@echo "            promote the best in the MLflow Model Registry, write reports/decision.md"
	@echo "            offline: make run COCO128=path/to/coco128.zip MODEL=yolov8n.yaml"
	@echo "make rollback [TO=version]  move the champion alias back to the previous champion"
	@echo "make test   set up .venv with the test tools, run ruff and the test suite"
	@echo "make ui     open the MLflow UI on the embedded store (http://127.0.0.1:5000)"

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Python >= 3.11 is required ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@echo "Installing requirements.txt (PyPI's torch is a CUDA build, about 5 GB; it also runs on CPU)..."
	$(BIN)/pip install --progress-bar off -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --progress-bar off -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

run: setup
	python -m yolo_mlops.course run $(OVERRIDES)
	@echo
	@dvc exp show --no-pager --only-changed --drop 'dvclive|data.json' 2>/dev/null || true
	@echo
	@echo "Results: reports/decision.md, reports/runs.csv, reports/*.png, reports/dvc_plots/index.html"
	@echo "MLflow:  run 'make ui' and open http://127.0.0.1:5000 (experiment cv_yolo_tiny, model yolo_tiny_person)"

rollback: setup
	python -m yolo_mlops.course rollback $(if $(TO),--to $(TO))

lint: $(VENV)/.installed-dev
	ruff check .

test: lint
	pytest

ui: setup
	@if [ -n "$$MLFLOW_TRACKING_URI" ]; then echo "MLFLOW_TRACKING_URI is set: open $$MLFLOW_TRACKING_URI"; \
	else mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000; fi

clean-venv:
	rm -rf $(VENV)
