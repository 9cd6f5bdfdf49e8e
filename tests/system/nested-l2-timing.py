"""Measure whether the guest loop can run on real vfio inside the system
tier's guest: L1 (the system image, TCG here) assigns its emulated
ich9-intel-hda through vfio-pci to L2 (the guest agent tier's kernel,
busybox and qemu-ga), TCG inside TCG. Prints L2's console marks in seconds.
Not collected by pytest; run as root after the system and guestagent tiers
have built their images:

    .venv/bin/python tests/system/nested-l2-timing.py [L2_LIMIT_SECONDS]
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.system.test_system import CACHE, qemu_command  # noqa: E402

L2_IMAGE = sorted(Path("/var/cache/vfio-advisor-tests/guestagent").glob("image*/vmlinuz"))


def main() -> int:
    limit = sys.argv[1] if len(sys.argv) > 1 else "900"
    images = sorted(CACHE.glob("*/rootfs.img"))
    if not images or not L2_IMAGE:
        print("build the system tier's and the guest agent tier's images first", file=sys.stderr)
        return 2
    image, l2 = images[0].parent, L2_IMAGE[-1].parent
    work = Path(tempfile.mkdtemp(prefix="nested-l2-"))
    share = work / "share.tar"
    with tarfile.open(share, "w") as tar:
        tar.add(Path(__file__).with_name("nested-l2-run.sh"), arcname="run.sh")
        for name in ("vmlinuz", "initrd.img", "modprobe-d.img"):
            tar.add(l2 / name, arcname=name)
    results = work / "results.img"
    with open(results, "wb") as f:
        f.truncate(16 << 20)
    console = work / "console.log"
    cmd = qemu_command(image, share, results, console)
    cmd[cmd.index("-append") + 1] += f" systemd.setenv=L2_LIMIT={limit}"
    cmd += ["-audiodev", "none,id=snd0", "-device", "ich9-intel-hda,addr=0x9",
            "-device", "hda-duplex,audiodev=snd0"]
    t0 = time.monotonic()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=open(work / "qemu.err", "wb"), timeout=2 * int(limit) + 600)
    print(f"L1 boot to power-off: {time.monotonic() - t0:.1f} s ({work})")
    with tarfile.open(results) as tar:
        tar.extractall(work / "out")  # our own guest's tar
    print((work / "out/results/l2.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
