# `make` lists the targets. `make run` and `make test` each do their own set-up on a fresh
# Debian machine. make run: virtualenv, install, Redis and PostgreSQL (configured ones if they
# answer, else private instances under .data/, scripts/services.py), audit schema. make test:
# virtualenv, the server programs; the tests start private PostgreSQL, Redis and RabbitMQ
# servers themselves (pytest-postgresql, pytest-redis, pytest-rabbitmq executors).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
SERVICES := .data/services.env
WITH_SERVICES := set -a && . $(SERVICES) && set +a &&

.PHONY: help venv services db run demo serve test unit chaos lint bench docker stop clean

help: ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create the virtualenv and install the package with its dev group

$(VENV)/.installed: pyproject.toml
	@scripts/ensure_python.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e . --group dev
	@touch $@

services: venv ## make sure Redis and PostgreSQL answer (start private ones if not)
	@$(VENV)/bin/python scripts/services.py start $(SERVICES)

db: services ## create or upgrade the audit schema
	@$(WITH_SERVICES) $(VENV)/bin/remediation db upgrade

run: db ## run a worker with one beat in the foreground, `remediation serve` and `watch` beside them
	$(WITH_SERVICES) { $(VENV)/bin/remediation serve & serve=$$!; }; \
	  { $(VENV)/bin/remediation watch & watch=$$!; }; \
	  trap 'kill $$serve $$watch 2>/dev/null' EXIT; \
	  $(VENV)/bin/celery -A remediation worker --beat --loglevel INFO

demo: db ## a scraper in miniature (runbook 001): faults injected, remediated, verified, reported
	$(WITH_SERVICES) $(VENV)/bin/python -m demo $(DEMO_ARGS)

serve: db ## `remediation serve` alone in the foreground (HTTP: Alertmanager's webhook)
	$(WITH_SERVICES) exec $(VENV)/bin/remediation serve

test: venv ## the whole suite (unit tier included) against real Redis, PostgreSQL, RabbitMQ, workers
	@scripts/ensure_test_tools.sh
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

unit: venv ## the unit tier alone (tests/unit): fakeredis and an in-memory audit store, no server
	env $(foreach v,$(filter REMEDIATION_%,$(.VARIABLES)),-u $(v)) $(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

chaos: venv ## the full chaos suite: 50+ kill -9s, 200+ schedule slots, 1,000 fuzz cases per action
	@scripts/ensure_test_tools.sh
	REMEDIATION_CHAOS_FULL=1 $(VENV)/bin/python -m pytest tests/chaos tests/fuzz $(PYTEST_ARGS)

lint: venv ## ruff (lint + format check), mypy --strict on the package, the layers' import contracts
	$(VENV)/bin/ruff check remediation demo tests bench scripts beat_schedule.py
	$(VENV)/bin/ruff format --check remediation demo tests bench scripts beat_schedule.py
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy demo
	$(VENV)/bin/lint-imports --no-cache

bench: db ## benchmarks under bench/, results in BENCHMARKS.md
	$(WITH_SERVICES) $(VENV)/bin/python -m bench

docker: ## start a Docker engine and the busybox test image (root)
	@scripts/ensure_docker.sh .data

stop: ## stop private Redis/PostgreSQL (and dockerd) started under .data/
	@[ ! -x $(VENV)/bin/python ] || $(VENV)/bin/python scripts/services.py stop
	-@[ -f .data/remediation-dockerd.pid ] && kill $$(cat .data/remediation-dockerd.pid) || true

clean: stop ## remove the virtualenv and private data
	rm -rf $(VENV) .data
