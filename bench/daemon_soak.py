#!/usr/bin/env python3
"""Child of bench/daemon_bench.py: `vfio-advisor daemon` as the command line
runs it (vfio_advisor.cli.main: its imports, libvirt and libvirtaio, the
libvirt test driver following one running domain with a GPU and its audio,
the sampling loop writing the metrics file after every sample), stopped
with SIGTERM after N samples. Prints `rss_kib=<VmRSS at the N-th sample>`.

Usage: daemon_soak.py HOST_ROOT SAMPLES WORKDIR [URI]

URI (default: the test driver on the one-domain node file) is a real
libvirtd's, e.g. qemu:///system (bench/real-libvirtd.sh): then no domain runs,
and the figure is the daemon's own without the test driver's in-process heap.

The only addition to the real path is a counter around Watcher.sample that
moves the vfio vectors' counters every 50 samples and stops the daemon; it
imports nothing the daemon does not (the RSS is the daemon's).
"""

from __future__ import annotations

import os
import signal
import sys

GPU = "0000:05:00.0"
AUDIO = "0000:05:00.1"
NODE = """<node>
<domain type='kvm'>
  <name>win11</name>
  <memory unit='GiB'>4</memory><vcpu>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'><address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0' multifunction='on'/></controller>
    <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></source><address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0' multifunction='on'/></hostdev>
    <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' slot='0x00' function='0x1'/></source><address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x1'/></hostdev>
  </devices>
</domain>
</node>
"""


def status_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def rss_kib() -> int:
    return status_kib("VmRSS")


def main() -> int:
    root, samples, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uri = sys.argv[4] if len(sys.argv) > 4 else f"test://{work}/node.xml"
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "node.xml"), "w") as f:
        f.write(NODE)
    config = os.path.join(work, "config.toml")
    open(config, "w").close()
    irq_dirs = [os.path.join(root, "sys/kernel/irq", n) for n in sorted(os.listdir(os.path.join(root, "sys/kernel/irq")))]

    from vfio_advisor import cli
    from vfio_advisor.daemon.watch import Watcher
    from vfio_advisor.sinks.journal import JOURNAL_SOCKET

    if not os.path.exists(JOURNAL_SOCKET):
        # No journald here (a container, a CI runner): the journal sink then
        # writes to stderr and never loads python3-systemd's C sender, which
        # an installed daemon loads at its first log line (libsystemd.so and
        # its libraries: ~0.6 MiB). Loaded here so that the figure is the
        # installed daemon's either way.
        from systemd import _journal  # noqa: F401, PLC0415

    real = Watcher.sample
    state = {"n": 0}

    def counted(self):
        n = state["n"] = state["n"] + 1
        if n % 50 == 0:
            for d in irq_dirs:
                with open(os.path.join(d, "per_cpu_count")) as f:
                    counts = [int(c) + 7 for c in f.read().split(",")]
                with open(os.path.join(d, "per_cpu_count"), "w") as f:
                    f.write(",".join(map(str, counts)) + "\n")
        out = real(self)
        if n == samples:
            # RssFile: pages of mapped files (libvirt.so, libcrypto, lxml's .so,
            # the interpreter), shared with every other process mapping them.
            sys.stdout.write(f"rss_kib={rss_kib()} anon_kib={status_kib('RssAnon')} "
                             f"file_kib={status_kib('RssFile')} samples={n} devices={self.device_count}\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    Watcher.sample = counted
    # As the console script calls it (argv from sys.argv): main() then takes
    # the program-only start-up path (no ssl), which main([...]) from tests never does.
    sys.argv = ["vfio-advisor", "daemon", "--connect", uri, "--host-root", root,
                "--interval", "0.000001", "--settle", "10", "--config", config,
                "--state-dir", os.path.join(work, "state"),
                "--metrics-file", os.path.join(work, "vfio-advisor.prom")]
    rc = cli.main()
    if state["n"] < samples:
        sys.stderr.write(f"daemon stopped after {state['n']} samples\n")
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
