#!/usr/bin/env python3
"""Benchmarks, as ratios against baselines measured in the same run.

  hook fast path   the installed hook for a non-analysing operation vs `sh -c :`
                   target <= 1.5x
  hook prepare     the hook for `prepare begin` on a domain with 4 hostdevs
                   (demo host tree) vs `python3 -c pass` with the hook's own
                   interpreter; target <= 3x

Wall times, median of N runs each, interleaved so machine noise hits both.
Run with `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples/demo-host"
ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}

FOUR_HOSTDEVS = """<domain type='kvm'>
  <name>bench4</name>
  <uuid>6a1c2f0e-3f43-4c1b-9b1e-0c3d8f9a7b21</uuid>
  <metadata><libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
    <libosinfo:os id="http://microsoft.com/win/11"/></libosinfo:libosinfo></metadata>
  <memory unit='KiB'>8388608</memory><vcpu>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
{ports}
{hostdevs}
  </devices>
</domain>
"""


def domain_xml() -> bytes:
    ports, hostdevs = [], []
    for i, (bus, fn) in enumerate([(5, 0), (5, 1), (6, 0), (8, 0)], start=1):
        ports.append(f"    <controller type='pci' index='{i}' model='pcie-root-port'><address "
                     f"type='pci' domain='0' bus='0' slot='2' function='{i - 1}'/></controller>")
        hostdevs.append(f"    <hostdev mode='subsystem' type='pci' managed='yes'><source><address "
                        f"domain='0' bus='{bus}' slot='0' function='{fn}'/></source><address "
                        f"type='pci' domain='0' bus='{i}' slot='0' function='0'/></hostdev>")
    return FOUR_HOSTDEVS.format(ports="\n".join(ports), hostdevs="\n".join(hostdevs)).encode()


def wall(cmd: list[str], stdin: bytes = b"") -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=ENV, check=False)
    return time.perf_counter() - t0


def compare(name: str, subject: list[str], baseline: list[str], runs: int, target: float,
            stdin: bytes = b"") -> bool:
    for _ in range(3):  # warm the page cache for both
        wall(subject, stdin), wall(baseline)
    a, b = [], []
    for _ in range(runs):
        a.append(wall(subject, stdin))
        b.append(wall(baseline))
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = ma / mb
    ok = ratio <= target
    print(f"{name:14} {ma * 1000:7.1f} ms vs {mb * 1000:6.1f} ms baseline  "
          f"ratio {ratio:4.2f}x  (target <= {target}x) {'ok' if ok else 'OVER'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, config = Path(tmp) / "root", Path(tmp) / "config.toml"
        subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                        "--config", str(config)], check=True, stdout=subprocess.DEVNULL)
        config.write_text(f'[hook]\nhost_root = "{DEMO / "root"}"\n')
        hook = str(root / "etc/libvirt/hooks/qemu.d/vfio-advisor")
        xml = domain_xml()
        print(f"vfio-advisor benchmarks, {args.runs} runs each, median wall time; "
              f"interpreter {sys.executable}")
        ok = compare("hook fast path", [hook, "bench4", "started", "begin", "-"],
                     ["sh", "-c", ":"], args.runs, 1.5, xml)
        ok &= compare("hook prepare", [hook, "bench4", "prepare", "begin", "-"],
                      [sys.executable, "-c", "pass"], args.runs, 3.0, xml)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
