# Raven: every target installs what it needs first, so a fresh machine (as root) can run any of them.
# The apt package list is the Dockerfile's list plus test-only tools; keep the two in step.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Runtime packages: the same list as the Dockerfile.
# graphviz: `raven graph -o svg` lays the graph out with its `dot`.
APT_RUNTIME := strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins iproute2 iptables wireguard-tools wireguard-go graphviz
# Test-only packages: ping, ps/pkill for the network-namespace lab; openssl makes the
# test API server's certificate; iperf3 carries bulk TCP in the no-fragments e2e test and make bench;
# dnsmasq-base is the lab's cluster DNS and conntrack drops the lab LB's old flows (e2e/services.py);
# prometheus (server and promtool): the alerting rules' unit tests and the e2e lab's Prometheus.
APT_TEST := iputils-ping procps openssl iperf3 dnsmasq-base conntrack prometheus
APT_PACKAGES := $(APT_RUNTIME) $(APT_TEST)
# The kernel tier (make test-kernel, e2e/vm.py): qemu (software emulation), kmod, a static busybox for
# virtme-ng's initramfs, and Debian's stock kernel (ESP, WireGuard, netem, IPVS as modules; the newest
# /boot/vmlinuz-*-amd64 is booted). virtme-ng comes from the pyproject's `kernel` extra.
APT_KERNEL_TEST := qemu-system-x86 kmod busybox-static linux-image-amd64
PYTEST_ARGS ?=

.PHONY: install install-system install-python install-kernel-test test test-kernel measure lint bench demo clean

install: install-system install-python

# apt only when something is missing (dpkg-query is instant; apt-get update is not).
install-system:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

install-python: $(VENV)/.installed

install-kernel-test: install
	@missing=$$(for p in $(APT_KERNEL_TEST); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(VENV)/bin/pip show -q virtme-ng >/dev/null 2>&1 || $(PY) -m pip install -q -e '.[dev,kernel]'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The long measurement variants (marker `minute`) run in `make measure`, so the suite stays well under 20 minutes.
test: install
	$(PY) -m pytest -q -m "not minute" $(PYTEST_ARGS)

# The kernel tier: e2e/kernel/lab.py inside a VM booted with Debian's kernel (kernel ESP; see e2e/README.md).
# VM_ARGS: e.g. --vpn-driver wireguard, --keep; PYTEST_ARGS go to pytest inside the VM.
test-kernel: install-kernel-test
	$(PY) -m e2e.vm e2e/kernel/lab.py $(VM_ARGS) -- $(PYTEST_ARGS)

# The e2e scenarios held for an issue's full duration and the five-run medians; figures in the terminal summary.
measure: install
	$(PY) -m pytest -q -m minute e2e/tests $(PYTEST_ARGS)

lint: install-python
	$(VENV)/bin/ruff check raven e2e tests
	$(VENV)/bin/mypy raven
	@# No Any above raven/kube/ (also set per module in pyproject.toml, so plain `mypy raven` checks it too);
	@# follow-imports=silent: the flag applies to these packages, not to raven/kube and raven/dataplane they import.
	$(VENV)/bin/mypy --strict --disallow-any-expr --follow-imports=silent raven/agent raven/controller raven/api raven/nattraversal

bench: install
	@mkdir -p bench-results
	@set -e; for b in $$(ls tests/benchmarks/bench_*.py 2>/dev/null | sort); do \
		m=$$(echo $$b | sed 's#/#.#g; s#\.py$$##'); echo "== $$m"; $(PY) -m $$m; done
	$(PY) -m tests.benchmarks.summary

demo: install
	$(PY) -m e2e.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) bench-results .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
