#!/usr/bin/env python3
"""Daemon benchmarks, as ratios measured in the same run.

  per-sample CPU  Watcher.sample() on a synthetic 256-CPU x 2000-row
                  /proc/interrupts (two watched domains, 12 vfio vectors),
                  against just reading the same file
  soak            10,000 samples with counters that move: CPU per sample and
                  RSS in the first and last thousand, as ratios (flat = 1.0)
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vfio_advisor.testing.hosttree import Host, build  # noqa: E402
from vfio_advisor.testing.scenes import domain_xml, gpu_audio_hostdevs  # noqa: E402
from vfio_advisor.testing.scenes import gpu_audio_devices as _gpu_audio  # noqa: E402
from vfio_advisor.facts.domain import parse_domain_xml  # noqa: E402
from vfio_advisor.facts.host import HostRoot  # noqa: E402
from vfio_advisor.facts.pciids import PciIds  # noqa: E402
from vfio_advisor.runtime import RuntimeConfig, StateStore, Watcher  # noqa: E402


def synthetic_interrupts(cpus: int, rows: int, bump: int = 0) -> str:
    out = ["      " + "".join(f"CPU{i:<8}" for i in range(cpus))]
    vfio = {45: "vfio-msi[0](0000:05:00.0)", 28: "vfio-intx(0000:05:00.1)"}
    for n in range(rows):
        irq = n + 24
        counts = " ".join(f"{(irq * 7 + c + bump) % 100000:10d}" for c in range(cpus))
        handler = vfio.get(irq, f"nvme0q{n % 64}")
        chip = "IR-IO-APIC   28-fasteoi" if irq == 28 else f"IR-PCI-MSI {irq * 2048}-edge"
        out.append(f"{irq:4d}: {counts}  {chip}      {handler}")
    for name in ("NMI", "LOC", "SPU", "PMI", "IWI", "RTR", "RES", "CAL", "TLB"):
        out.append(f" {name}: " + " ".join(f"{c:10d}" for c in range(cpus)) + "   Some interrupts")
    out.append(" ERR:          0")
    out.append(" MIS:          0")
    return "\n".join(out) + "\n"


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def make_watcher(root: Path, text: str) -> tuple[Watcher, Clock]:
    build(root, Host(devices=_gpu_audio(gpu_irq=45, audio_irq=28, gpu_msi=(45,)), interrupts=text))
    clock = Clock()
    w = Watcher(HostRoot(root), RuntimeConfig(settle=10), lambda f, d: None, StateStore(None),
                clock=clock, pci_ids=PciIds(None))
    for name in ("win11", "win10"):
        w.add_domain(parse_domain_xml(domain_xml(name, gpu_audio_hostdevs())))
    return w, clock


def cpu() -> float:
    return time.process_time()


def per_sample(root: Path, runs: int) -> tuple[float, float]:
    text = synthetic_interrupts(256, 2000)
    w, clock = make_watcher(root, text)
    path = root / "proc/interrupts"
    t0 = cpu()
    for _ in range(runs):
        with open(path, "rb") as f:
            f.read()
    read = (cpu() - t0) / runs
    t0 = cpu()
    for _ in range(runs):
        clock.now += 5
        w.sample()
    sample = (cpu() - t0) / runs
    return sample, read


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def soak(root: Path, samples: int) -> dict:
    w, clock = make_watcher(root, synthetic_interrupts(32, 300))
    path = root / "proc/interrupts"
    window = samples // 10
    marks = {}
    t0 = cpu()
    for i in range(samples):
        if i % 50 == 0:
            path.write_text(synthetic_interrupts(32, 300, bump=i))
        clock.now += 5
        w.sample()
        if i + 1 == window:
            marks["first_cpu"] = (cpu() - t0) / window
            marks["first_rss"] = rss_kib()
        if i + 1 == samples - window:
            t_last = cpu()
    marks["last_cpu"] = (cpu() - t_last) / window
    marks["last_rss"] = rss_kib()
    return marks


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        sample, read = per_sample(Path(tmp) / "a", 30)
        print(f"per-sample CPU   {sample * 1000:7.2f} ms vs {read * 1000:6.2f} ms to read the "
              f"256-CPU x 2000-row file  ratio {sample / read:5.1f}x")
        m = soak(Path(tmp) / "b", 10000)
        print(f"soak 10,000      CPU/sample first {m['first_cpu'] * 1e6:6.0f} us, last "
              f"{m['last_cpu'] * 1e6:6.0f} us  ratio {m['last_cpu'] / m['first_cpu']:4.2f}x; "
              f"RSS first {m['first_rss']} KiB, last {m['last_rss']} KiB  ratio "
              f"{m['last_rss'] / m['first_rss']:4.2f}x")
        flat = m["last_cpu"] / m["first_cpu"] < 1.5 and m["last_rss"] / m["first_rss"] < 1.1
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
