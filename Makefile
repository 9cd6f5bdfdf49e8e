# The README's two commands: `make demo` and `make test`. Both work as root on
# a fresh Debian 12 machine and are quick the second time (stamps).

PYTHON   ?= /usr/bin/python3
VENV     := .venv
VPY      := $(VENV)/bin/python
STAMPS   := .stamps
# Every Debian package the build and the test tiers need: the single list.
# A tier adds its own line (one-line change): APT_PACKAGES += pkg ...  # tier
APT_PACKAGES :=
# Build deps of libvirt-python and systemd-python (no wheels), plus what the
# tests run: systemd-journald/journalctl (systemd), pci.ids (hwdata).
APT_PACKAGES += python3 python3-venv python3-dev gcc pkg-config libvirt-dev libsystemd-dev libc6-dev
APT_PACKAGES += systemd hwdata libvirt-daemon-system qemu-system-x86
# make deb (debhelper + pybuild), lintian, the man page check (groff), and the
# system tier's guest image (mmdebstrap, mkfs.ext4 -d).
APT_PACKAGES += debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-lxml
APT_PACKAGES += lintian groff-base mmdebstrap e2fsprogs git
# fix: libvirt's schema check (virt-xml-validate runs xmllint).
APT_PACKAGES += libvirt-clients libxml2-utils
# fix: the corpus sweep applies every printed diff with patch.
APT_PACKAGES += patch  # fix
APT_PACKAGES += iproute2  # the sampler's kernfs sentinel test (a veth in a private network namespace)
# fleet tier: the real Prometheus (with promtool), node_exporter and journal-remote/upload;
# permission tests run the product as nobody with setpriv.
APT_PACKAGES += prometheus prometheus-node-exporter systemd-journal-remote util-linux
# unit check: systemd-analyze verify runs man(1) on the unit's Documentation=man:vfio-advisor(8).
APT_PACKAGES += man-db  # unit
# cockpit tier and make cockpit-demo: Debian's Cockpit serves the page, chromium renders it;
# dbus-daemon stands in for the system bus where a container has none.
APT_PACKAGES += cockpit-ws cockpit-bridge cockpit-system chromium chromium-driver dbus-daemon
# guest agent tier (tests/guestagent): a real qemu-ga in a TCG guest, Wine's reg.exe.
APT_PACKAGES += qemu-guest-agent busybox-static wine wine64

# make deb: from a clean checkout (git archive of DEB_REF), built and checked
# outside the source tree; the .deb is left in DEB_DIR.
DEB_DIR  ?= /var/tmp/vfio-advisor-deb
DEB_REF  ?= HEAD

.PHONY: demo test test-nested deps venv clean bench bench-scale bench-kernel lab deb cockpit-demo

demo: venv
	$(VENV)/bin/vfio-advisor advise \
	    --connect test://$(CURDIR)/examples/demo-host/node.xml \
	    --host-root examples/demo-host/root || [ $$? -eq 1 ]

# The Cockpit page (cockpit/) against the demo host, served by Debian's
# cockpit-ws on 127.0.0.1 with no login (--local-session); runs until Ctrl-C.
PORT ?= 9090
cockpit-demo: venv
	$(VPY) -m tests.cockpit.cockpitws demo --port $(PORT)

# No test may write into the host's journal: pytest runs in a private mount
# namespace where /run/systemd/journal is an empty tmpfs (the script says how).
test: venv
	tests/system/without-host-journal.sh $(VPY) -m pytest -q tests

# The guest loop on real vfio (tests/system/test_guest_loop_nested.py): an L2
# guest under TCG inside the system tier's guest. make test runs it only
# where that guest gets KVM; here it takes 8.5-10 minutes (docs/kvm.md).
test-nested: venv
	VFIO_ADVISOR_NESTED=1 tests/system/without-host-journal.sh $(VPY) -m pytest -q -rs \
	    tests/system/test_guest_loop_nested.py

# PATH: Debian's toolchain and interpreter only (a pyenv or venv first in PATH
# would build with a python3 that lacks dh-python's modules).
deb: deps
	@command -v git >/dev/null && git -C $(CURDIR) rev-parse --verify -q $(DEB_REF) >/dev/null \
	    || { echo "make deb: needs git and a commit $(DEB_REF) (it builds a clean checkout)" >&2; exit 2; }
	rm -rf $(DEB_DIR)/src $(DEB_DIR)/vfio-advisor_* $(DEB_DIR)/vfio-advisor-cockpit_* && mkdir -p $(DEB_DIR)/src
	git -C $(CURDIR) archive $(DEB_REF) | tar -x -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc --no-sign >$(DEB_DIR)/build.log 2>&1 \
	    || { tail -40 $(DEB_DIR)/build.log; exit 1; }
	lintian --allow-root --fail-on error $(DEB_DIR)/vfio-advisor_*_all.deb $(DEB_DIR)/vfio-advisor-cockpit_*_all.deb
	rm -rf $(DEB_DIR)/src
	@ls $(DEB_DIR)/vfio-advisor_*_all.deb $(DEB_DIR)/vfio-advisor-cockpit_*_all.deb

deps: $(STAMPS)/apt
$(STAMPS)/apt: Makefile
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
	$(VPY) bench/guest_bench.py

# Scale: 128 domains x 4 VFs (1,536 vectors) on a 256-CPU host tree, advise
# over 128 domains, 64 concurrent hook runs (docs/scale.md). A few minutes on
# 2 cores; like make test, nothing it starts may write into the host journal.
bench-scale: venv
	tests/system/without-host-journal.sh $(VPY) bench/scale_bench.py

# What each read of the daemon's sampler costs a real kernel (Debian 6.1
# under QEMU TCG) at 2 and 256 possible CPUs: per_cpu_count against
# /proc/stat and a sentinel (bench/kernel_read_cost/README.md). ~30 s; needs
# the lab's kernel (make lab or the lab tests build it) and gcc.
bench-kernel:
	python3 bench/kernel_read_cost/run.py

# Regenerate the lab's real vfio captures (lab/captures) from QEMU guests.
lab: venv
	$(VPY) lab/run.py

clean:
	rm -rf $(VENV) $(STAMPS) .pytest_cache
