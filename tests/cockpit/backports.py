"""bookworm-backports' Cockpit 337 beside the installed one, for the browser
tier's second leg, without touching the system's apt state or its cockpit.

apt-get reads a private sources list (bookworm-backports only, signed by
Debian's archive keyring) into private lists and caches under CACHE
(apt.conf(5): Dir::State::Lists, Dir::Etc::SourceList, Dir::Etc::SourceParts,
Dir::Cache), `apt-get download` fetches the three debs, `dpkg -x` unpacks
them into CACHE/prefix. Nothing is installed: /var/lib/dpkg and the system's
/usr/lib/cockpit stay bookworm's 287, which other tiers use.

The three packages need nothing that only backports has: cockpit-ws 337
depends on bookworm's libraries (and libnss-systemd, only for logins, which
--local-session does not do); cockpit-bridge 337 is pure Python
(`Depends: python3:any`) and its /usr/bin/cockpit-bridge is a console-script
stub (`from cockpit.bridge import main`), which runs on bookworm's python3
3.11 once the prefix's dist-packages is on sys.path; cockpit-system is HTML
and JavaScript. The BRIDGE wrapper puts that directory on sys.path itself
rather than through PYTHONPATH, which the bridge would hand on to every
program it spawns (vfio-advisor among them).

    python -m tests.cockpit.backports     # fetch (or reuse) and print the prefix
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "337"
PACKAGES = ("cockpit-ws", "cockpit-bridge", "cockpit-system")
CACHE = Path(os.environ.get("VFIO_ADVISOR_COCKPIT_CACHE", f"/var/cache/vfio-advisor-tests/cockpit-{VERSION}"))
PREFIX = CACHE / "prefix"
BRIDGE = PREFIX / "cockpit-bridge-337"
STAMP = PREFIX / ".unpacked"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# A local mirror of Debian's archive may stand in for deb.debian.org.
MIRROR = os.environ.get("VFIO_ADVISOR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SOURCES = f"deb [signed-by={KEYRING}] {MIRROR} bookworm-backports main\n"
SITE = PREFIX / "usr/lib/python3/dist-packages"
WS = PREFIX / "usr/lib/cockpit/cockpit-ws"


class Unavailable(Exception):
    """Why Cockpit 337 cannot be had here: one line, the skip reason."""


def apt_options() -> list[str]:
    return ["-o", f"Dir::State::Lists={CACHE / 'lists'}", "-o", f"Dir::Etc::SourceList={CACHE / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={CACHE / 'sources.list.d'}", "-o", f"Dir::Cache={CACHE / 'apt'}",
            # the debs land in a root-owned cache: no drop to _apt for the download
            "-o", "APT::Sandbox::User=root", "-o", "Acquire::Retries=1", "-o", "Acquire::http::Timeout=20",
            "-qq"]


def apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *apt_options(), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def first_line(text: str) -> str:
    """apt's line that says why: the failed fetch where there is one, not
    the summary after it."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if "Failed to fetch" in line or line.startswith(("E:", "Err:")):
            return line
    return lines[-1] if lines else "no output"


def candidate(package: str) -> str | None:
    """The version of `package` that bookworm-backports offers now."""
    out = subprocess.run(["apt-cache", *apt_options(), "madison", package], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        _, version, source = (part.strip() for part in line.split("|"))
        if "bookworm-backports" in source:
            return version
    return None


def bridge_wrapper() -> str:
    return ("#!/bin/sh\n"
            "# cockpit-bridge 337 from this prefix on the system's python3 (see tests/cockpit/backports.py)\n"
            f"exec /usr/bin/python3 -c 'import sys; sys.path.insert(0, \"{SITE}\"); sys.argv[0] = \"cockpit-bridge\";"
            " from cockpit.bridge import main; sys.exit(main())' \"$@\"\n")


def fetch() -> None:
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} missing: not a Debian system")
    if not os.path.exists(KEYRING):
        raise Unavailable(f"{KEYRING} missing (Debian package debian-archive-keyring)")
    for sub in ("lists/partial", "apt/archives/partial", "sources.list.d", "debs"):
        (CACHE / sub).mkdir(parents=True, exist_ok=True)
    (CACHE / "sources.list").write_text(SOURCES)
    out = apt("update")
    if out.returncode != 0 or "Err:" in out.stdout + out.stderr or "W: Failed" in out.stderr:
        raise Unavailable(f"Debian's archive is not reachable (apt-get update of bookworm-backports: "
                          f"{first_line(out.stderr or out.stdout)})")
    versions = {p: candidate(p) for p in PACKAGES}
    for package, version in versions.items():
        if version is None or not version.startswith(VERSION + "-"):
            raise Unavailable(f"bookworm-backports offers {package} {version or 'not at all'}, not {VERSION}")
    debs = CACHE / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    out = apt("download", *(f"{p}={v}" for p, v in versions.items()), cwd=debs)
    if out.returncode != 0:
        raise Unavailable(f"apt-get download of cockpit {VERSION} failed: {first_line(out.stderr or out.stdout)}")
    # Unpacked beside, then renamed: an interrupted run leaves no half prefix.
    staging = Path(tempfile.mkdtemp(prefix="prefix-", dir=CACHE))
    try:
        for deb in sorted(debs.glob("*.deb")):
            out = subprocess.run(["dpkg", "-x", str(deb), str(staging)], capture_output=True, text=True)
            if out.returncode != 0:
                raise Unavailable(f"dpkg -x {deb.name} failed: {first_line(out.stderr)}")
        staging.chmod(0o755)  # the unprivileged leg's bridge runs as nobody
        (staging / BRIDGE.name).write_text(bridge_wrapper())
        (staging / BRIDGE.name).chmod(0o755)
        (staging / STAMP.name).write_text("".join(f"{p} {v}\n" for p, v in versions.items()))
        if PREFIX.exists():
            shutil.rmtree(PREFIX)
        staging.rename(PREFIX)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def prepare() -> Path:
    """The unpacked prefix of Cockpit 337, fetched once and then reused
    without the network. Raises Unavailable with the reason."""
    if not STAMP.exists():
        if os.geteuid() != 0:
            raise Unavailable(f"fetching into {CACHE} needs root (apt-get download), and it is not cached yet")
        CACHE.mkdir(parents=True, exist_ok=True)
        # One fetch at a time (two test runs at once): the second waits and
        # finds the prefix the first unpacked.
        with open(CACHE / ".fetch.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not STAMP.exists():
                fetch()
    for path in (WS, SITE / "cockpit/bridge.py", PREFIX / "usr/share/cockpit/base1/manifest.json",
                 PREFIX / "usr/share/cockpit/shell/manifest.json", BRIDGE):
        if not path.exists():
            raise Unavailable(f"{path} missing from the unpacked cockpit {VERSION} (remove {CACHE} to fetch again)")
    # Debian 12's python3 is 3.11; the bridge's own check is whether it runs at all.
    out = subprocess.run([str(BRIDGE), "--version"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or f"Version: {VERSION}" not in out.stdout:
        raise Unavailable(f"cockpit-bridge {VERSION} does not run on this python3: "
                          f"{first_line(out.stderr or out.stdout)}")
    return PREFIX


def versions() -> str:
    return STAMP.read_text().strip().replace("\n", ", ") if STAMP.exists() else "not fetched"


if __name__ == "__main__":
    try:
        print(prepare())
        print(versions())
    except Unavailable as exc:
        print(f"cockpit {VERSION}: {exc}", file=sys.stderr)
        sys.exit(1)
