# `make run` serves on 127.0.0.1:5000 over ./mlartifacts; `make test` installs everything tests need and runs them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint install install-test bench stack mlflow-venv mlflow-prev-venv debian-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(RUN_STAMP)

# What `make run` needs, installed once: a second `make run` starts at once. The test install below covers it too.
$(RUN_STAMP): pyproject.toml constraints.txt $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all]'
	touch $(RUN_STAMP)

# One pip call resolves aiobotocore's botocore pin together with moto/boto3, and constraints.txt pins the set
# known to work: unpinned, pip's resolver backtracks for minutes into ancient releases.
$(STAMP): pyproject.toml constraints.txt $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,test]'
	$(BIN)/pip check
	touch $(STAMP) $(RUN_STAMP)

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

# The full `mlflow` package (tracking server, and the second of the two MLflow clients the tests drive: the mlflow==
# pin of constraints.txt) lives in its own venv. The script is fast when it is in place and reinstalls on a new pin.
mlflow-venv:
	bash deploy/setup-mlflow-venv.sh

# The previous MLflow (the mlflow-skinny pin's version, 3.17.2) as a full package, for the browser test's 3.17 UI:
# only the three mlflow distributions, over .venv-mlflow's dependencies (about 95 MB).
mlflow-prev-venv: mlflow-venv
	bash deploy/setup-mlflow-prev-venv.sh

# From Debian, only what is missing: nginx (the one-origin front) and chromium with chromium-driver (the browser test).
debian-packages:
	bash deploy/install-debian-packages.sh

install-test: $(STAMP) $(RUN_STAMP) node_modules/.installed mlflow-venv mlflow-prev-venv debian-packages

# `make run PORT=5001` (or ARTIFACT_PROXY_PORT in the environment) when 5000 is taken, e.g. by `mlflow server`.
PORT ?= $(or $(ARTIFACT_PROXY_PORT),5000)
run: install
	$(BIN)/artifact-proxy server --artifacts-destination ./mlartifacts --host 127.0.0.1 --port $(PORT)

# ruff (style, imports, bugbear) on everything Python; mypy strict on the service.
lint: $(STAMP)
	$(BIN)/ruff check app tests bench deploy
	$(BIN)/ruff format --check app tests bench deploy
	$(BIN)/mypy app

test: install-test lint
	$(BIN)/python -m pytest -q

stack: install
	bash deploy/stack.sh

bench: install-test
	bash bench/setup.sh && $(BIN)/python bench/run.py && $(BIN)/python bench/trees.py && $(BIN)/python bench/layers.py

clean:
	rm -rf $(VENV) .venv-mlflow .venv-mlflow-prev node_modules .pytest_cache
