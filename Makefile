# The platform's entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STACK := infra/local/stack.sh
SERVICES := infra/local/services.sh
PYTEST_ARGS ?=
# Commands that talk to the stack read the addresses `stack.sh up` writes.
WITH_STACK_ENV := set -a; [ -f .stack/env ] && . .stack/env; set +a;

export PYTHON := $(abspath $(PY))

.PHONY: help setup up down status test test-unit test-integration test-fault test-stack soak bench demo protos protos-check lint clean image manifests dashboard docs screenshots

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml libs/mlops-client/pyproject.toml
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ml]'
	$(PY) -m pip install -q -e libs/mlops-client
	@touch $@

setup: $(VENV)/.installed ## Install everything: Python packages, Kafka jars, PostgreSQL, versitygw, Jaeger, Prometheus, deployment checkers (cached)
	bash infra/local/install.sh
	bash infra/local/install.sh ghz
	bash infra/k8s/install-tools.sh
	bash infra/k8s/install-tools.sh prometheus
	bash tests/install-tritonclient.sh

up: setup ## Start the local stack (Kafka, PostgreSQL, S3, Jaeger, Prometheus) and every service; returns when all are ready; the CLI's context `local` points at it
	bash $(STACK) up
	bash $(SERVICES) up
	@$(WITH_STACK_ENV) $(PY) -m mlops.cli context set local --from-env --use
	@# people with tokens: the contexts local-operator and local-viewer reach the token listeners (port + 10)
	@$(WITH_STACK_ENV) for who in operator viewer; do \
	  MLOPS_GRPC_CLIENT_TOKEN="$$(cat .stack/clients/$$who.token)" MLOPS_REGISTRY_ADDR=127.0.0.1:50061 \
	  MLOPS_DEPLOYER_ADDR=127.0.0.1:50062 MLOPS_MONITOR_ADDR=127.0.0.1:50063 \
	  env -u MLOPS_GRPC_CLIENT_CERT_FILE -u MLOPS_GRPC_CLIENT_KEY_FILE $(PY) -m mlops.cli context set local-$$who --from-env; \
	done

down: ## Stop the services and the stack (data is kept; `bash infra/local/stack.sh down --purge` drops it)
	bash $(SERVICES) down
	bash $(STACK) down

status: ## Show what is running and ready
	bash $(STACK) status; s=$$?; bash $(SERVICES) status && exit $$s

test: up ## Run every test (unit, integration, end-to-end, fault injection against the real stack, stack lifecycle)
	$(PY) -m pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)
	$(PY) -m pytest tests/fault -s $(PYTEST_ARGS)
	$(PY) -m pytest tests/stack $(PYTEST_ARGS)

test-unit: $(VENV)/.installed ## Unit tests only (no services needed)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: up ## Integration tests against the running stack
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-fault: up ## The fault-injection suite (R1-R10): kills and restarts real processes of the running stack
	$(PY) -m pytest tests/fault -s $(PYTEST_ARGS)

soak: up ## R10 for 30 minutes: 80% of the inference server's measured maximum, memory and p99 watched
	MLOPS_SOAK_SECONDS=$${MLOPS_SOAK_SECONDS:-1800} $(PY) -m pytest tests/fault/test_soak.py -s $(PYTEST_ARGS)

bench: up ## Benchmarks, side by side in one run; figures go to bench-results/ (docs/benchmarks.md quotes them)
	bash tests/bench/setup.sh
	$(WITH_STACK_ENV) $(PY) -m tests.bench.bench_bus
	$(WITH_STACK_ENV) $(PY) -m tests.bench.bench_registry
	$(WITH_STACK_ENV) $(PY) -m tests.bench.bench_inference --skip-setup
	$(WITH_STACK_ENV) $(PY) -m tests.bench.bench_drift
	$(WITH_STACK_ENV) $(PY) -m tests.bench.bench_training

demo: up ## The closed loop on the local stack: train, deploy, serve, drift, retrain, canary, production (~2 min)
	$(WITH_STACK_ENV) $(PY) -m mlops.demo
	@echo "console: http://127.0.0.1:8080/login?token=$$(cat .stack/clients/console-token)"

screenshots: up ## Draw the console's main pages in headless Chromium into docs/console/ (the README's pictures)
	MLOPS_CONSOLE_SCREENSHOTS=$(abspath docs/console) $(PY) -m pytest tests/stack/test_console_browser.py -k screenshots

protos: $(VENV)/.installed ## Generate Python code from protos/ into libs/
	bash protos/generate.sh libs
	bash libs/mlops-client/generate.sh

protos-check: $(VENV)/.installed ## Fail when the generated code is stale or was edited by hand
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && bash protos/generate.sh $$tmp >/dev/null && \
	  for f in $$(cd $$tmp && find . -name '*.py' -o -name '*.pyi' | sort); do \
	    cmp -s $$tmp/$$f libs/$$f || { echo "stale or hand-edited: libs/$${f#./} (run 'make protos')"; exit 1; }; \
	  done && \
	  for f in $$(cd libs && find . -name '*_pb2*.py*' -not -path '*/__pycache__/*' | sed 's|^\./||' | sort); do \
	    test -f $$tmp/$$f || { echo "generated file without a proto: libs/$$f"; exit 1; }; \
	  done && echo "generated code is up to date"

lint: $(VENV)/.installed ## Ruff over the hand-written code (generated code is excluded), then the import contracts (pyproject.toml)
	$(VENV)/bin/ruff check libs services tests
	$(VENV)/bin/ruff format --check libs services tests
	$(VENV)/bin/lint-imports --no-cache

image: ## Build the one image every service runs from (needs Docker): mlops:dev
	docker build -t $${MLOPS_IMAGE:-mlops:dev} .

manifests: setup ## Render the Kubernetes overlays into build/k8s/{local,production,gpu}.yaml (kustomize)
	@mkdir -p build/k8s
	$(PY) infra/k8s/topics.py --check
	$(PY) infra/k8s/alert_rules.py --check
	for o in local production gpu; do $${MLOPS_CACHE:-$$HOME/.cache/mlops}/bin/kustomize build infra/k8s/overlays/$$o > build/k8s/$$o.yaml && echo "build/k8s/$$o.yaml"; done

dashboard: up ## Run the demo while a Prometheus scrapes every service, then draw the Grafana dashboard from it: docs/dashboard.png
	bash infra/k8s/install-tools.sh prometheus
	$(WITH_STACK_ENV) $(PY) infra/grafana/render.py --run "$(PY) -m mlops.demo" --after $${DASHBOARD_AFTER_S:-60} --out docs/dashboard.png

docs: $(VENV)/.installed ## Regenerate docs/configuration.md from the settings classes (`make test` fails when it is stale)
	$(PY) infra/docs/configuration.py

clean: ## Remove caches of the build (not the stack's data)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
