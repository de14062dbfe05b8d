# virtops.kvm: the README's two commands are `make demo` and `make test`; both run setup first.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(VENV)/collections
PYTEST := $(VENV)/bin/pytest

.PHONY: setup demo test test-unit test-integration test-lab lint sanity ruff ansible-lint changelog-lint

setup:
	@./scripts/setup.sh

demo: setup
	ansible-playbook playbooks/demo.yml

# The whole suite: quality gates, fast unit tests, then tests against the real libvirtd and lab.
test: setup
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-integration
	@$(MAKE) --no-print-directory test-lab

test-unit:
	$(PYTEST) -m "not integration and not lab" tests/unit

test-integration:
	$(PYTEST) -m "integration" tests/integration

test-lab:
	$(PYTEST) -m "lab" tests/lab tests/integration

lint: ruff sanity ansible-lint changelog-lint

ruff:
	ruff check plugins tests scripts
	ruff format --check plugins tests scripts

sanity:
	./scripts/sanity.sh

ansible-lint:
	./scripts/ansible-lint.sh

changelog-lint:
	antsibull-changelog lint
