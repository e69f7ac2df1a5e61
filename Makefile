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
# Many machines: make run RAY=auto (or RAY=<head>:6379); make ray-worker RAY=<head>:6379 on each GPU machine
RAY ?=
# Experiments at once in DVC's queue: make run JOBS=1 (default 2: python -m yolo_mlops.grid run --help)
JOBS ?=
# Test files run side by side in pytest-xdist workers, each file in one (its module fixtures built once):
# make test TEST_WORKERS=1 for one worker (pytest alone runs them in turn)
TEST_WORKERS ?= 2

# `make user` without its arguments is refused before `setup` builds anything.
ifneq ($(filter user,$(MAKECMDGOALS)),)
ifeq ($(and $(NAME),$(ROLE)),)
$(error error: give the user and the role: make user NAME=<name> ROLE=viewer|member|maintainer)
endif
endif

.PHONY: help setup run rollback test lint ui up down user remote ray-head ray-worker clean-venv

help:
	@echo "make help        this list (the default target)"
	@echo "make setup       create .venv and install requirements.txt (run, rollback and ui do this first)"
	@echo "make run         set up .venv, run the grid of grid.yaml through DVC's queue, compare the runs,"
	@echo "                 promote the best in the MLflow Model Registry, write reports/decision.md"
	@echo "                 offline: make run COCO128=path/to/coco128.zip MODEL=yolov8n.yaml"
	@echo "make rollback    move the champion alias back to the previous champion; TO=version picks the version"
	@echo "make test        set up .venv with the test tools, run ruff and the test suite"
	@echo "make lint        set up .venv with the test tools, run ruff only"
	@echo "make ui          open the MLflow UI on the embedded store (http://127.0.0.1:5000),"
	@echo "                 or print the server's address when MLFLOW_TRACKING_URI is set"
	@echo "make up          start the team stack (MinIO, PostgreSQL, MLflow server) from .env"
	@echo "make down        stop the team stack; its named volumes, and so every run, are kept"
	@echo "make user        NAME=alice ROLE=viewer|member|maintainer: create (or update) a user of the stack's"
	@echo "                 MLflow server, print a new user's password once (docs/security.md)"
	@echo "make remote      make the stack's MinIO bucket this clone's DVC remote (credentials from .env)"
	@echo "make ray-head    start the head of a Ray cluster on this machine (ray start --head, port 6379)"
	@echo "make ray-worker  join this machine to the Ray cluster at RAY=<head>:6379 (ray start --address)"
	@echo "                 then: make run RAY=auto (on the head) or RAY=<head>:6379 runs the grid on the cluster"
	@echo "make clean-venv  delete .venv (the next target that needs it rebuilds it)"
	@echo
	@echo "The grid's steps one by one: python -m yolo_mlops.grid queue|start|compare|promote|rollback"
	@echo "(run it inside .venv; python -m yolo_mlops.grid --help explains each)."

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
	$(if $(RAY),@$(RAY_TOKEN) set -x; )python -m yolo_mlops.grid run $(OVERRIDES) $(if $(RAY),--ray $(RAY)) $(if $(JOBS),--jobs $(JOBS))
	@echo
	@echo "Results: reports/decision.md, reports/runs.csv, reports/*.png, reports/dvc_plots/index.html"
	@echo "MLflow:  run 'make ui', then open the experiment address printed above (experiment cv_yolo_tiny, model yolo_tiny_person)"

rollback: setup
	python -m yolo_mlops.grid rollback $(if $(TO),--to $(TO))

lint: $(VENV)/.installed-dev
	ruff check .

test: lint
	pytest -n $(TEST_WORKERS) --dist loadfile --durations=40

ui: setup
	@if [ -n "$$MLFLOW_TRACKING_URI" ]; then echo "MLFLOW_TRACKING_URI is set: open $$MLFLOW_TRACKING_URI"; \
	else echo "MLflow UI: http://127.0.0.1:5000; an experiment opens on its GenAI overview until the switch at the top"; \
	echo "left is set to Model training (the browser remembers it), or open the address \`make run\` printed."; \
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000; fi

# The team stack (docker-compose.yml); `down` keeps the named volumes, so every run survives.
# MLflow's sign-in: its admin's password and the sign-in app's key, never a placeholder nor MLflow's old default.
MLFLOW_DEFAULT_ADMIN_PASSWORD := password1234
up:
	@test -f .env || { echo "error: .env is missing: cp .env.example .env, then replace its change-me values"; exit 1; }
	@! grep -Eq '^[A-Z_]+=change-me' .env || { echo "error: .env still holds change-me placeholder passwords"; exit 1; }
	@. ./.env && for name in MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do \
		[ -n "$${!name:-}" ] || { echo "error: .env: $$name is not set (see .env.example)"; exit 1; }; \
	done && \
	[ "$$MLFLOW_AUTH_ADMIN_PASSWORD" != "$(MLFLOW_DEFAULT_ADMIN_PASSWORD)" ] || \
		{ echo "error: .env: MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's well-known old default; choose another"; exit 1; } && \
	[ "$${#MLFLOW_AUTH_ADMIN_PASSWORD}" -ge 12 ] || \
		{ echo "error: .env: MLFLOW_AUTH_ADMIN_PASSWORD is shorter than 12 characters (MLflow's minimum)"; exit 1; }
	docker compose up -d --build --wait --wait-timeout 300
	@echo "MLflow: http://localhost:5000 (sign in as admin)   MinIO console: http://localhost:9001"
	@echo "Next: make user NAME=<name> ROLE=viewer|member|maintainer for each team member; then, in a clone:"
	@echo "export MLFLOW_TRACKING_URI=http://localhost:5000 MLFLOW_TRACKING_USERNAME=<name> MLFLOW_TRACKING_PASSWORD=..."

# A team member's account on the stack's MLflow server (tracking/team.py), as its admin (password from .env);
# the server is $$MLFLOW_TRACKING_URI, else the stack on this machine. RESET=1 gives an existing user a new password.
user: setup
	@test -f .env || { echo "error: .env is missing: make user signs in with the stack's MLFLOW_AUTH_ADMIN_PASSWORD"; exit 1; }
	@. ./.env && [ -n "$${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] || \
		{ echo "error: .env: MLFLOW_AUTH_ADMIN_PASSWORD is not set (see .env.example)"; exit 1; }; \
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-http://$${STACK_HOST_IP:-127.0.0.1}:5000}" \
	MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$$MLFLOW_AUTH_ADMIN_PASSWORD" \
	python -m yolo_mlops.tracking.team "$(NAME)" "$(ROLE)" $(if $(RESET),--reset-password)

down:
	docker compose down

# DVC remote `minio` (.dvc/config): endpoint and credentials go to .dvc/config.local (git-ignored).
remote:
	@test -f .env || { echo "error: .env is missing: cp .env.example .env (values from your stack's admin)"; exit 1; }
	@command -v dvc >/dev/null || { echo "error: dvc not found: run make setup first"; exit 1; }
	@set -a && . ./.env && set +a && \
	for name in DVC_S3_ENDPOINT_URL DVC_S3_ACCESS_KEY_ID DVC_S3_SECRET_ACCESS_KEY; do \
		[ -n "$${!name:-}" ] || { echo "error: .env: $$name is not set (see .env.example)"; exit 1; }; \
	done && \
	dvc remote modify --local minio endpointurl "$$DVC_S3_ENDPOINT_URL" && \
	dvc remote modify --local minio access_key_id "$$DVC_S3_ACCESS_KEY_ID" && \
	dvc remote modify --local minio secret_access_key "$$DVC_S3_SECRET_ACCESS_KEY" && \
	dvc remote default --local minio && \
	echo "DVC remote: minio (s3://dvc at $$DVC_S3_ENDPOINT_URL), credentials in .dvc/config.local"

# A Ray cluster over the team's machines, each a clone with `make setup` and `make remote`. The workers import
# the project from this clone (PYTHONPATH), take the DVC remote's credentials from its .dvc/config.local and
# MLflow's account from the shell's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
# Ray's token mode (RAY_AUTH_MODE=token): every node and driver holds the cluster's token, from .env's
# RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH names (Ray's own variables; the shell's win over .env);
# anything without it is refused. No usage statistics are sent to Ray's makers.
RAY_TOKEN := if [ -z "$${RAY_AUTH_TOKEN:-}$${RAY_AUTH_TOKEN_PATH:-}" ] && [ -f .env ]; then . ./.env; fi; \
	if [ -n "$${RAY_AUTH_TOKEN_PATH:-}" ]; then \
		[ -f "$$RAY_AUTH_TOKEN_PATH" ] || { echo "error: RAY_AUTH_TOKEN_PATH=$$RAY_AUTH_TOKEN_PATH: no such file"; exit 1; }; \
		export RAY_AUTH_TOKEN_PATH; \
	elif [ -n "$${RAY_AUTH_TOKEN:-}" ] && [ "$${RAY_AUTH_TOKEN\#change-me}" = "$$RAY_AUTH_TOKEN" ]; then \
		export RAY_AUTH_TOKEN; \
	else echo "error: no Ray token: set RAY_AUTH_TOKEN in .env (not its change-me value; see .env.example), or \
	RAY_AUTH_TOKEN_PATH=<a file holding it>"; exit 1; fi; export RAY_AUTH_MODE=token;
RAY_OPTIONS := --disable-usage-stats --node-manager-port=6380 --object-manager-port=6381 --runtime-env-agent-port=6382 \
	--dashboard-agent-grpc-port=6383 --dashboard-agent-listen-port=52365 --metrics-export-port=6384 \
	--min-worker-port=10002 --max-worker-port=10100

ray-head: setup
	@$(RAY_TOKEN) set -x; PYTHONPATH=$(CURDIR) ray start --head --port=6379 --dashboard-host=127.0.0.1 $(RAY_OPTIONS)

ray-worker: setup
	@test -n "$(RAY)" || { echo "error: give the head's address: make ray-worker RAY=<head>:6379"; exit 1; }
	@$(RAY_TOKEN) set -x; PYTHONPATH=$(CURDIR) ray start --address=$(RAY) $(RAY_OPTIONS)

clean-venv:
	rm -rf $(VENV)
