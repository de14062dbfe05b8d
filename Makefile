# virtops.kvm: the README's two commands are `make demo` and `make test`; both run setup first.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(VENV)/collections
PYTEST := $(VENV)/bin/pytest

.PHONY: setup demo test test-install test-image-build test-host-molecule test-unit test-integration test-lab lint sanity ruff ansible-lint changelog-lint bench

setup:
	@./scripts/setup.sh

# This machine as a KVM host with two cloud-init guests (playbooks/demo.yml); the guests are
# found by the inventory plugin (inventory/demo.libvirt.yml). A second run changes nothing.
demo: setup
	ansible-playbook -i inventory/localhost.yml -i inventory/demo.libvirt.yml playbooks/demo.yml

# The whole suite in stages that stop at the first failure (scripts/test.sh): fast gates
# (ruff, changelog, test collection, unit tests on ansible-core 2.19 and 2.16), slow gates
# (sanity on both, ansible-lint) with the lab images and the host role's default and bridge
# Molecule scenarios beside them, then the real libvirtd tests (integration, booted guests,
# the guest role's Molecule scenario) with the multi-host lab's tests as a stream beside them.
test: setup
	@./scripts/test.sh

# The Molecule scenarios of the host role: default (25 minutes alone under TCG on 2 cores),
# bridge and selinux (sVirt on a guest booted with SELinux enforcing).
test-host-molecule: setup
	$(PYTEST) tests/integration/test_role_host_molecule.py

# The image module building a Debian image from the archive, four times (check, apply, check,
# apply): 3-4 minutes on an idle 2-core machine, not part of make test.
test-image-build: setup
	$(PYTEST) -m image_build tests/integration/test_image.py

# A real Debian network install by the guest role (install_tree with the netboot kernel and
# initrd of debian-installer-12-netboot-amd64, a preseed, the archive through libvirt's default
# NAT network and a local apt-cacher-ng), then SSH as the preseeded user; not part of make test.
# Needs an archive that serves the installer's udebs (this machine's does not: the test says so
# in seconds); VIRTOPS_INSTALL_MIRROR=HOST/DIRECTORY names another. See roles/guest/README.md.
test-install: setup
	$(PYTEST) -m install tests/integration/test_install.py

# Fast tests only: no libvirtd needed beyond libvirt's test:///default driver.
test-unit:
	$(PYTEST) -m "not integration and not lab" tests/unit

# Against the real local libvirtd, booting no guest.
test-integration:
	$(PYTEST) -m "integration and not lab" tests

# Slow tests that boot guests or namespaced libvirt hosts.
test-lab:
	$(PYTEST) -m "lab" tests

lint: ruff sanity ansible-lint changelog-lint

ruff:
	ruff check plugins tests scripts devtools
	ruff format --check plugins tests scripts devtools

sanity:
	./scripts/sanity.sh

ansible-lint:
	./scripts/ansible-lint.sh

changelog-lint:
	antsibull-changelog lint

# Benchmarks against community.libvirt (not part of `make test`; about an hour under TCG).
# Makes benchmarks/.venv-peer and .venv-plot from their pinned files, writes
# benchmarks/results/<time>/ (tables.md, results.csv, results.json, *.png).
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--only noop,info --reps 5".
bench: setup
	$(VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)
