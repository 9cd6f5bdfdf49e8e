"""Which QEMU accelerator the test tiers' guests get: KVM where a stock
Debian kernel really boots under this machine's /dev/kvm, TCG otherwise.

/dev/kvm existing is not enough. On the machines this suite runs on (2-core
AMD EPYC VMs) /dev/kvm is served by kvm_pvm, the Pagetable-based Virtual
Machine module (Ant Group's software KVM, github.com/virt-pvm/linux,
arch/x86/kvm/pvm/pvm.c), not by kvm_amd: the CPU has no svm flag. PVM runs
a guest's supervisor mode in hardware ring 3 and is built for PVM-enabled
guest kernels (CONFIG_PVM_GUEST); an unmodified Debian kernel under it never
got out of its decompressor in 90 s here, where TCG reaches init in 4 s, and
`-cpu host`/`max` abort in QEMU 7.2 (kvm_buf_set_msrs on MSR 0x10a). The
details and the measurements are in docs/kvm.md.

So the choice is made by booting: the tier's own kernel, no initramfs, no
root, panic=-1 under `-no-reboot`, must print its "Kernel panic" (the
kernel ran all of start_kernel and got to mounting root) within
PROBE_SECONDS under -accel kvm. Hardware KVM should take about a second
(not measured: no machine here has kvm_intel or kvm_amd).
The verdict is cached per host boot (/proc/sys/kernel/random/boot_id), QEMU
version and loaded KVM modules, so a suite run pays for one probe at most.

VFIO_ADVISOR_ACCEL=tcg or =kvm forces the choice (kvm still needs /dev/kvm).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "/usr/bin/qemu-system-x86_64"
CACHE = Path(os.environ.get("VFIO_ADVISOR_ACCEL_CACHE", "/var/cache/vfio-advisor-tests/accel"))
# TCG reaches the root-mount panic in 5-8 s on a loaded 2-core machine, and
# hardware KVM should be faster still; 20 s leaves room for a loaded host without letting a
# crawling accelerator (kvm_pvm: no progress in 90 s) pass.
PROBE_SECONDS = 20.0
PANIC_MARK = b"Kernel panic - not syncing"


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg": QEMU's -accel, and libvirt's <domain type> via domain_type
    reason: str

    @property
    def qemu_args(self) -> list[str]:
        return ["-accel", self.name]

    @property
    def domain_type(self) -> str:
        """libvirt's <domain type=...>: 'kvm' for KVM, 'qemu' for TCG
        (libvirt docs formatdomain.html, "Element and attribute overview")."""
        return "kvm" if self.name == "kvm" else "qemu"


def kvm_modules() -> list[str]:
    """The loaded modules that can back /dev/kvm (kvm_intel, kvm_amd, or
    kvm_pvm on PVM hosts), from /sys/module."""
    try:
        return sorted(m for m in os.listdir("/sys/module") if m.startswith("kvm_"))
    except OSError:
        return []


def _qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return out.stdout.splitlines()[0] if out.stdout else "none"


def _cache_key() -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    blob = "\n".join([boot_id, _qemu_version(), ",".join(kvm_modules())])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def probe(kernel: Path, seconds: float = PROBE_SECONDS, accel: str = "kvm") -> Accel:
    """Boot KERNEL under -accel ACCEL (kvm; tcg checks the check), uncached:
    ACCEL only if it panics on the missing root within SECONDS."""
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "no read-write access to /dev/kvm")
    modules = ",".join(kvm_modules()) or "none"
    argv = [QEMU, "-accel", accel, "-nodefaults", "-display", "none", "-no-reboot", "-m", "256",
            "-serial", "stdio", "-monitor", "none", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1"]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        return Accel("tcg", f"KVM boot check could not start QEMU: {exc}")
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        where = out.decode(errors="replace").strip().splitlines()[-1:] or ["(no console output)"]
        return Accel("tcg", f"KVM boot check: the kernel did not reach its root-mount panic in "
                            f"{seconds:.0f} s under -accel kvm (KVM modules: {modules}; last console "
                            f"line: {where[0][:100]!r}); see docs/kvm.md")
    took = time.monotonic() - started
    if PANIC_MARK in out:
        return Accel(accel, f"{accel.upper()} boot check passed in {took:.1f} s (KVM modules: {modules})")
    # QEMU's "KVM internal error. Suberror: 1" (emulation failure) or an
    # abort setting MSRs lands on stderr.
    last = err.decode(errors="replace").strip().splitlines()[:1] or [f"exit {proc.returncode}"]
    return Accel("tcg", f"KVM boot check failed after {took:.1f} s (KVM modules: {modules}): "
                        f"{last[0][:160]}; see docs/kvm.md")


def choose(kernel: Path) -> Accel:
    """The accelerator for guests on this host, from the cache or one probe
    with KERNEL; the reason goes to stderr once per process."""
    forced = os.environ.get("VFIO_ADVISOR_ACCEL", "")
    if forced in ("tcg", "kvm"):
        return _announce(Accel(forced, f"forced by VFIO_ADVISOR_ACCEL={forced}"))
    key = _cache_key()
    entry = CACHE / f"{key}.json"
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        lock = open(CACHE / ".lock", "w")  # noqa: SIM115 - held for the probe
    except OSError:
        return _announce(probe(kernel, PROBE_SECONDS))
    with lock:
        # Serialise: two tiers (or two suites on one machine) must not both
        # spend a probe, and one QEMU competing with another skews the timing.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(entry.read_text())
            return _announce(Accel(data["name"], data["reason"] + " (cached)"))
        except (OSError, ValueError, KeyError):
            pass
        accel = probe(kernel, PROBE_SECONDS)
        entry.write_text(json.dumps({"name": accel.name, "reason": accel.reason}))
        return _announce(accel)


_announced: set[str] = set()


def _announce(accel: Accel) -> Accel:
    line = f"guest accelerator: {accel.name.upper()} ({accel.reason})"
    if line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)
    return accel


if __name__ == "__main__":
    # accel.py KERNEL [--fresh]: print the choice (and probe anew with --fresh).
    if len(sys.argv) < 2:
        sys.exit("usage: accel.py KERNEL [--fresh]")
    chosen = probe(Path(sys.argv[1])) if "--fresh" in sys.argv[2:] else choose(Path(sys.argv[1]))
    print(chosen.name)
