# The README's two commands: `make demo` and `make test`. Both work as root on
# a fresh Debian 12 machine and are quick the second time (stamps).

PYTHON   ?= /usr/bin/python3
VENV     := .venv
VPY      := $(VENV)/bin/python
STAMPS   := .stamps
# Build deps of libvirt-python and systemd-python (no wheels), plus what the
# tests run: systemd-journald/journalctl (systemd), pci.ids (hwdata).
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libvirt-dev \
                libsystemd-dev systemd hwdata libvirt-daemon-system qemu-system-x86 \
                libc6-dev

.PHONY: demo test deps venv clean bench lab

demo: venv
	$(VENV)/bin/vfio-advisor advise \
	    --connect test://$(CURDIR)/examples/demo-host/node.xml \
	    --host-root examples/demo-host/root || [ $$? -eq 1 ]

test: venv
	$(VPY) -m pytest -q tests

deps: $(STAMPS)/apt
$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(STAMPS)/venv
$(STAMPS)/venv: $(STAMPS)/apt pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

bench: venv
	$(VPY) bench/run.py
	$(VPY) bench/daemon_bench.py

# Regenerate the lab's real vfio captures (lab/captures) from QEMU guests.
lab: venv
	$(VPY) lab/run.py

clean:
	rm -rf $(VENV) $(STAMPS) .pytest_cache
