"""Shared by the guest-agent tests: the cached test guest, what is missing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("VFIO_ADVISOR_TEST_CACHE", "/var/cache/vfio-advisor-tests")) / "guestagent"
QEMU_GA = "/usr/sbin/qemu-ga"


def missing(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in tools:
        if not (shutil.which(tool) or Path(tool).is_file()):
            return f"{tool} is not installed (make deps installs it)"
    return None


def guest_image() -> tuple[Path | None, str]:
    """The built guest (kernel, initramfs, /etc/modprobe.d disk), cached under a
    name that changes with the build script. (None, why) when it cannot be built."""
    script = HERE / "build-guest.sh"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    image = CACHE / f"image-{digest}"
    out = subprocess.run([str(script), str(image)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return None, f"cannot build the test guest (Debian's archive needed): {out.stderr.strip()[-300:]}"
    return image, ""


def stop_qemu_ga(proc: subprocess.Popen) -> None:
    """Stop a qemu-ga the test started. Debian's qemu-ga 7.2 was seen not to
    exit on SIGTERM (2 of 6 stops in one run here, under load): its main thread
    sat in a futex wait with SIGTERM blocked, i.e. inside its own signal
    handler (qga/main.c quits the GLib main loop from that handler). SIGKILL
    then, so that no agent outlives the test holding its socket."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
