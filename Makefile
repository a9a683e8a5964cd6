# batchvirt.farm — the two commands that matter: `make demo` and `make test`.
# `make help` lists the rest.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
BIN          := $(VENV)/bin
COLLECTIONS  := $(CURDIR)/build/collections
LINK         := $(COLLECTIONS)/ansible_collections/batchvirt/farm
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_ROLES_PATH := $(CURDIR)/roles
export ANSIBLE_NOCOLOR ?= 1
export ANSIBLE_FORCE_COLOR ?= 0
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
GI_VENV      := build/galaxy-importer
.PHONY: help venv deps link lint ruff mypy yamllint ansible-lint readmes docs-commands sanity unit test-images test-images-wait \
        check build importer-venv integration molecule test quick demo demo-clean bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(BIN)/.stamp: requirements.txt requirements-test.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt -c constraints.txt
	touch $@

venv: $(BIN)/.stamp ## create the Python venv (.venv) with every tool

deps: ## install system packages from bindep.txt (apt, needs root)
	scripts/install-deps.sh

link: ## expose the repository as ansible_collections/batchvirt/farm under build/
	@mkdir -p $(dir $(LINK)) && ln -sfn $(CURDIR) $(LINK)

ruff: venv
	$(BIN)/ruff check plugins tests bench scripts
	$(BIN)/ruff format --check plugins tests bench scripts

mypy: venv link
	cd $(COLLECTIONS) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
	  -p ansible_collections.batchvirt.farm.plugins

yamllint: venv
	$(BIN)/yamllint -s .

ansible-lint: venv link
	$(BIN)/ansible-lint --offline -q
	$(BIN)/python scripts/check-role-vars.py

readmes: venv ## check every role README against meta/argument_specs.yml (--write: scripts/role-readmes.py)
	$(BIN)/python scripts/role-readmes.py

docs-commands: venv link ## ansible-doc every plugin, --syntax-check every documented playbook command
	$(BIN)/python scripts/check-docs-commands.py

lint: ruff mypy yamllint ansible-lint readmes docs-commands ## ruff, mypy, yamllint, ansible-lint, READMEs, documented commands

sanity: venv ## ansible-test sanity on a copy under build/sanity/ansible_collections/
	scripts/sanity.sh

unit: venv link ## unit tests
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

check: lint sanity unit ## the fast loop: lint, sanity, unit

$(GI_VENV)/.stamp: scripts/galaxy-importer.txt
	test -x $(GI_VENV)/bin/python || $(PYTHON) -m venv $(GI_VENV)
	$(GI_VENV)/bin/pip install -q --disable-pip-version-check -r scripts/galaxy-importer.txt
	touch $@

importer-venv: $(GI_VENV)/.stamp ## galaxy-importer in its own venv (its pins clash with .venv)

build: venv $(GI_VENV)/.stamp ## ansible-galaxy collection build, install into build/install, galaxy-importer
	rm -rf build/dist build/install
	$(BIN)/ansible-galaxy collection build --output-path build/dist --force .
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install $(BIN)/ansible-galaxy collection install \
	  --offline --force -p build/install build/dist/batchvirt-farm-*.tar.gz
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install $(BIN)/ansible-doc -l batchvirt.farm
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install scripts/check-installed.sh
	scripts/galaxy-importer.sh build/dist/batchvirt-farm-*.tar.gz

integration: venv link ## integration tests against real daemons (libvirtd, Slurm, HTTP, tracker)
	$(BIN)/pytest tests/integration -v --timeout=1800 -p no:cacheprovider --durations=40 $(PYTEST_ARGS)

molecule: venv link ## every molecule scenario under extensions/molecule/
	scripts/molecule.sh

test-images: venv link ## start building the integration tests' worker image and bed root filesystem in the background
	scripts/test-images.sh start

test-images-wait: ## wait for what `make test-images` started, show its log
	scripts/test-images.sh wait

test: ## everything CI runs: deps, venv, lint, sanity, unit, build, integration, molecule
	@STOP_ON_FAIL="deps venv" scripts/steps.sh deps venv test-images lint sanity unit build test-images-wait \
	  integration molecule

quick: ## lint and unit tests only (seconds)
	@scripts/steps.sh ruff mypy yamllint unit

DEMO_INVENTORY := -i playbooks/inventory/localhost.yml -i playbooks/inventory/demo.farm.slots.yml

demo: deps venv link ## set up localhost as a one-hypervisor farm, show it, roll an update across it
	$(BIN)/ansible-playbook -i playbooks/inventory/localhost.yml playbooks/demo.yml
	@echo "== the lifecycle inventory before the rolling update"
	$(BIN)/ansible-inventory -i playbooks/inventory/demo.farm.slots.yml --graph
	@echo "== rolling update to version 2 (one slot at a time, no job killed; each replaced slot boots"
	@echo "   and registers again: about 2-3 minutes per slot under QEMU, quiet while it boots;"
	@echo "   a second demo finds every slot on version 2 already and replaces nothing)"
	$(BIN)/ansible-playbook $(DEMO_INVENTORY) playbooks/rolling_update.yml \
	  -e @/var/lib/batchvirt/demo/operations.yml -e farm_rolling_update_min_capacity_share=0.5 \
	  -e farm_rolling_update_reason="demo security update"
	@echo "== after the rolling update"
	$(BIN)/ansible-inventory -i playbooks/inventory/demo.farm.slots.yml --graph
	sinfo -N -l
	@cat scripts/demo-next.txt

demo-clean: venv link ## remove the demo farm and put back what the machine had before it
	$(BIN)/ansible-playbook -i playbooks/inventory/localhost.yml playbooks/demo_clean.yml

bench: deps venv link ## run every benchmark under bench/ (each prints a JSON line)
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean: ## remove build output (keeps the venv)
	rm -rf build tests/output .mypy_cache .pytest_cache .ruff_cache
