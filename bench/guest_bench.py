"""`vfio-advisor guest` on the TCG test guest: wall time per device.

Boots the guest-agent test guest (tests/guestagent: Debian's kernel and
qemu-ga 7.2 under a private libvirtd, QEMU TCG), runs `vfio-advisor guest
DOMAIN --ids 8086:293e --format json` RUNS times and prints one line:

    BENCH guest_wall_per_device devices=N runs=R median_ms=... max_ms=...

The figure is the whole CLI (interpreter start, libvirt connection, guest-info,
guest-get-osinfo, one guest-exec of the inventory with its status polls) under
TCG: an upper bound for a KVM guest. Skips (exit 0, a SKIP line) without root,
libvirtd, QEMU or qemu-ga. Not for loops: one boot is ~15-30 s here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.guestagent.support import HERE, QEMU_GA, guest_image, missing  # noqa: E402

RUNS = 5


def main() -> int:
    reason = missing("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "unshare", QEMU_GA, "/bin/busybox")
    image, why = (None, reason) if reason else guest_image()
    if image is None:
        print(f"SKIP guest_wall_per_device: {why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="guest-bench-") as work:
        out = subprocess.run([str(HERE / "run-loop.sh"), work, str(image), sys.executable, "--bench", str(RUNS)],
                             capture_output=True, text=True, timeout=900)
        path = Path(work, "transcript.json")
        if out.returncode != 0 or not path.exists():
            print(f"guest bench failed: {out.stderr[-500:]}", file=sys.stderr)
            return 1
        bench = json.loads(path.read_text())["bench"]
    devices = max(1, bench["devices"])
    per_device = [w * 1000 / devices for w in bench["walls"]]
    print(f"BENCH guest_wall_per_device devices={bench['devices']} runs={len(per_device)} "
          f"median_ms={statistics.median(per_device):.0f} max_ms={max(per_device):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
