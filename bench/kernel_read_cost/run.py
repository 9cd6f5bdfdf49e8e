#!/usr/bin/env python3
"""What the kernel spends on each read the interrupt sampler could make.

Boots the lab's Debian 6.1 cloud kernel (lab/build.sh caches it; this script
only reads it) under QEMU with kcost.c as the whole initramfs, once per
possible-CPU count and boot, and prints one line per boot:

  BENCH kernel_read possible_cpus=256 per_cpu_count_us=... hwirq_us=...
        actions_us=... proc_stat_us=... proc_stat_bytes=... nr_irqs=...
        poll_fds=84 poll_us=... poll_per_fd_us=... poll_many_fds=512 ...
        proc_interrupts_us=... null_syscall_us=... stat_matches_sum=yes|no(...)
        poll_check=ok|FAILED(...)

followed by extra key=value fields (CPU-clock figures, sizes, spread, and
the poll semantics: poll_fresh_*, poll_after_read_*, poll_teardown_*,
poll_others_ready). Exits non-zero when a boot fails or a poll check fails.

  python3 bench/kernel_read_cost/run.py [--cpus default,256] [--boots 2]
  python3 bench/kernel_read_cost/run.py --cpus 256/16 --boots 1   # 16 online

"default" boots without possible_cpus=, so the kernel's possible mask is the
-smp count (QEMU's ACPI MADT lists only those processors). Under TCG the
absolute times are inflated; the ratios between reads, and between CPU
counts, are the point. Stdlib only.
"""
from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAB = Path("/var/cache/vfio-advisor-tests/lab")  # read only: the lab's build owns it
CACHE = Path(os.environ.get("KCOST_CACHE", "/var/cache/vfio-advisor-tests/kcost"))
QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
SMP = 2
# kcost.c loads these (in its own order) so that the guest has MSI-X vectors.
MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "virtio_console", "virtio-rng"]
# virtio-serial with 31 ports has 64 virtqueues; vectors=65 gives each its own
# MSI-X vector (vp_find_vqs_msix per_vq_vectors), as a NIC or NVMe device's
# queues have on a host.
DEVICES = ["-device", "virtio-rng-pci", "-device", "virtio-serial-pci,max_ports=31,vectors=65"]


def newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio "newc" archive (what the kernel's init/initramfs.c unpacks):
    (name, mode, data, rdev) per entry; written here so that no cpio tool is
    needed and /dev/console can be a device node without mknod rights."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries + [("TRAILER!!!", 0, b"", 0)], 1):
        nm = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(nm), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nm
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs() -> Path:
    """kcost.c built static as /init, plus /dev/console (the kernel opens it
    for init's stdio: init/main.c console_on_rootfs; without it the results
    would have nowhere to go). Cached by the source's and gcc's identity."""
    src = (HERE / "kcost.c").read_bytes()
    mods = []
    for name in MODULES:
        found = sorted((LAB / "debian/modules").rglob(f"{name}.ko"))
        if not found:
            raise SystemExit(f"no {name}.ko under {LAB / 'debian/modules'}: build the lab first")
        mods.append((name, found[0].read_bytes()))
        src += found[0].read_bytes()
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(src + gcc.encode()).hexdigest()[:16]
    img = CACHE / f"kcost-{key}.img"
    if img.is_file():
        return img
    CACHE.mkdir(parents=True, exist_ok=True)
    binary = CACHE / f"kcost-{key}.{os.getpid()}"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(binary), str(HERE / "kcost.c")], check=True)
    data = binary.read_bytes()
    binary.unlink()
    archive = newc([("dev", 0o040755, b"", 0), ("dev/console", 0o020600, b"", (5 << 8) | 1),
                    ("proc", 0o040755, b"", 0), ("sys", 0o040755, b"", 0),
                    ("lib", 0o040755, b"", 0), ("lib/modules", 0o040755, b"", 0),
                    *[(f"lib/modules/{n}.ko", 0o100644, m, 0) for n, m in mods],
                    ("init", 0o100755, data, 0)])
    tmp = img.with_suffix(f".{os.getpid()}")
    tmp.write_bytes(gzip.compress(archive, 1))
    tmp.rename(img)  # by rename: another run may be booting it
    return img


def boot(img: Path, spec: str, timeout: float) -> tuple[dict[str, str], str, float]:
    """spec: "default" (possible = the -smp count), "N" (possible_cpus=N,
    2 online), or "N/M" (possible_cpus=N, M online: -smp M)."""
    cpus, _, online = spec.partition("/")
    # possible_cpus= is read by arch/x86/kernel/smpboot.c prefill_possible_map
    # (early_param "possible_cpus"): it sets the possible mask regardless of
    # how many processors the MADT lists, capped at CONFIG_NR_CPUS. nr_cpu_ids
    # follows it, and with it every per-CPU walk: per_cpu_count_show's
    # for_each_possible_cpu, and nr_irqs (arch/x86/kernel/apic/vector.c
    # arch_probe_nr_irqs adds 8 * nr_cpu_ids), hence /proc/stat's intr line.
    extra = "" if cpus == "default" else f" possible_cpus={cpus}"
    cmd = [QEMU, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", online or str(SMP), "-m", "512",
           "-nographic", "-vga", "none", "-no-reboot", "-net", "none",
           "-kernel", str(LAB / "vmlinuz"), "-initrd", str(img),
           "-append", f"console=ttyS0 quiet panic=-1{extra}", *DEVICES]
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    took = time.monotonic() - start
    console = out.stdout.decode("utf-8", "replace").replace("\r", "")
    fields: dict[str, str] = {}
    for line in console.splitlines():
        # Firmware escape codes may precede a line: match KCOST anywhere.
        m = re.search(r"KCOST (.*)", line)
        if m:
            for word in m.group(1).split(" "):
                k, _, v = word.partition("=")
                fields[k] = v
    return fields, console, took


def frac(value: str | None) -> tuple[int, int] | None:
    a, _, b = (value or "").partition("/")
    return (int(a), int(b)) if a.isdigit() and b.isdigit() else None


def poll_failures(f: dict[str, str]) -> list[str]:
    """Which of kcost.c's poll checks failed (poll_cost, poll_semantics):
    a fresh actions fd polls POLLERR|POLLPRI and one read later nothing
    (fs/kernfs/file.c kernfs_generic_poll against kernfs_seq_show's
    of->event); kept, read fds poll nothing during the cost rounds; once
    virtio-rng is unbound every fd of its vectors polls POLLERR|POLLPRI and
    preads ENODEV (kernfs_fop_poll / kernfs_fop_read_iter when
    kernfs_get_active fails on the removed node), while the fd of every IRQ
    not the device's (neither a vector nor its INTx line, which the unbind
    may free as well and which is only reported) still polls nothing. POLLERR|POLLPRI is taken from the guest
    (poll_teardown_want) rather than written here."""
    want = f.get("poll_teardown_want", "missing")
    failed = []
    fresh, after = frac(f.get("poll_fresh_ready")), frac(f.get("poll_after_read_ready"))
    down, others = frac(f.get("poll_teardown_ready")), frac(f.get("poll_others_ready"))
    if not (fresh and fresh[1] and fresh[0] == fresh[1] and f.get("poll_fresh_revents") == want):
        failed.append("fresh")
    if not (after and after[1] and after[0] == 0):
        failed.append("after_read")
    if f.get("poll_ready") != "0" or f.get("poll_many_ready", "0") != "0":
        failed.append("cost_ready")
    if not (down and down[1] and down[0] == down[1] and f.get("poll_teardown_revents") == want
            and f.get("poll_teardown_pread_errno") == str(errno.ENODEV)):
        failed.append("teardown")
    if not (others and others[1] and others[0] == 0):
        failed.append("others")
    return failed


def bench_line(cpus: str, f: dict[str, str], took: float) -> str:
    ok = f.get("stat_matches_sum", "?")
    if ok == "no":
        ok = (f"no(checked={f['stat_checked']},mismatches={f['stat_mismatches']},"
              f"moving={f['stat_moving']},nonzero_without_dir={f['stat_nonzero_without_dir']},"
              f"{f['stat_detail']})")
    main = ["per_cpu_count_us", "hwirq_us", "actions_us", "poll_fds", "poll_us", "poll_per_fd_us",
            "poll_many_fds", "poll_many_us", "poll_many_per_fd_us", "proc_stat_us", "proc_stat_bytes", "nr_irqs",
            "proc_interrupts_us", "null_syscall_us"]
    extra = ["possible", "per_cpu_count_fields", "per_cpu_count_bytes", "proc_stat_4096_read",
             "proc_interrupts_bytes", "irq", "irq_actions", "irq_chip", "sysfs_irqs", "stat_checked", "stat_retried", "online",
             "per_cpu_count_cpu_us", "hwirq_cpu_us", "actions_cpu_us", "proc_stat_cpu_us",
             "proc_interrupts_cpu_us", "null_syscall_cpu_us",
             "per_cpu_count_min_us", "per_cpu_count_max_us", "proc_stat_min_us", "proc_stat_max_us", "freed_dir_gone", "freed_per_cpu_count_errno",
             "freed_hwirq_errno", "freed_actions_errno", "freed_stat_entry", "rebound_irq_reused",
             "rebound_old_hwirq_fd_errno", "poll_cpu_us", "poll_min_us", "poll_max_us", "poll_many_cpu_us",
             "poll_ready", "poll_many_ready", "poll_fresh_ready", "poll_fresh_revents", "poll_after_read_ready",
             "poll_teardown_device", "poll_teardown_irqs", "poll_teardown_ready", "poll_teardown_revents",
             "poll_teardown_pread_errno", "poll_teardown_intx", "poll_teardown_intx_revents",
             "poll_teardown_intx_pread_errno", "poll_others_ready", "poll_others_detail"]
    failed = poll_failures(f)
    poll_check = f"FAILED({','.join(failed)})" if failed else "ok"
    words = [f"possible_cpus={cpus.partition('/')[0]}"] + [f"{k}={f.get(k, '?')}" for k in main] + [f"stat_matches_sum={ok}"]
    words += [f"poll_check={poll_check}"]
    words += [f"{k}={f.get(k, '?')}" for k in extra] + [f"boot_s={took:.1f}"]
    return "BENCH kernel_read " + " ".join(words)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", default="default,256",
                    help=f"comma list of: default (possible = -smp {SMP}), N (possible_cpus=N, {SMP} online), "
                         "N/M (possible_cpus=N, M online; under TCG a boot takes ~1.5 s per vCPU)")
    ap.add_argument("--boots", type=int, default=2, help="boots per CPU count (to show spread)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--console", type=Path, help="directory to keep each boot's console in")
    args = ap.parse_args()
    if not (LAB / "vmlinuz").is_file():
        print(f"no {LAB / 'vmlinuz'}: build the lab first (lab/build.sh {LAB})", file=sys.stderr)
        return 2
    img = initramfs()
    failed = 0
    for boot_no in range(1, args.boots + 1):
        for cpus in args.cpus.split(","):
            f, console, took = boot(img, cpus, args.timeout)
            if args.console:
                args.console.mkdir(parents=True, exist_ok=True)
                (args.console / f"{cpus.replace('/', '-online')}-{boot_no}.log").write_text(console)
            if "done" not in f:
                failed += 1
                print(f"BENCH kernel_read possible_cpus={cpus} failed boot={boot_no}; console tail:\n"
                      + "\n".join(console.splitlines()[-20:]), file=sys.stderr)
                continue
            want = None if cpus == "default" else f"0-{int(cpus.partition('/')[0]) - 1}"
            if want and f.get("possible") != want:
                print(f"warning: asked for {cpus} possible CPUs, kernel has {f.get('possible')}",
                      file=sys.stderr)
            print(bench_line(cpus, f, took) + f" boot={boot_no}", flush=True)
            if poll_failures(f):
                failed += 1
                print(f"BENCH kernel_read possible_cpus={cpus} boot={boot_no}: poll check failed: "
                      + ", ".join(poll_failures(f)), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
