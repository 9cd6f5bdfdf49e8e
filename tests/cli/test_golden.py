"""Golden output for the demo host (examples/demo-host): `advise --format
json` and `guest-irqs --format json`, pinned in tests/data/golden/ so that
any change of the JSON schema or of the advice shows up in review.

advise plans domain XML fixes for the findings that have one, verified with
virt-xml-validate (libvirt-clients, libxml2-utils) and libvirt's test driver:
its golden files carry those results, so they need the tools (skipped
without them, since the verification results would differ).

Regenerate after an intended change with
    VFIO_ADVISOR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/cli/test_golden.py
and read the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/data/golden"
NODE = f"test://{REPO / 'examples/demo-host/node.xml'}"
ROOT = "examples/demo-host/root"  # relative, as the JSON echoes it


def run(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=dict(os.environ, NO_COLOR="1"))
    assert out.returncode in (0, 1), out.stderr
    doc = json.loads(out.stdout)
    if "tool" in doc:
        doc["tool"]["version"] = "<version>"  # a release bump is not a schema change
    return doc


CASES = {
    "advise-demo-host.json": ("advise", "--connect", NODE, "--host-root", ROOT, "--format", "json",
                              "--config", os.devnull),
    # VA5001 on two INTx cards sharing GSI 22: one verified joint change for both findings.
    "advise-two-intx.json": ("advise", "--xml", "tests/data/fix/q35-two-intx.xml", "--host-root",
                             ROOT, "--format", "json", "--config", os.devnull),
    "guest-irqs-oldbox.json": ("guest-irqs", "oldbox", "--connect", NODE, "--host-root", ROOT,
                               "--format", "json"),
    "device-demo-host.json": ("device", "0000:05:00.0", "0000:05:00.1", "0000:08:00.0",
                              "--host-root", ROOT, "--format", "json"),
}


def verification_tools_missing() -> str | None:
    for tool, package in (("virt-xml-validate", "libvirt-clients"), ("xmllint", "libxml2-utils")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {package}): advise's fix objects differ"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python not installed: advise's fix objects differ"
    return None


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_golden(name):
    if CASES[name][0] == "advise" and (why := verification_tools_missing()):
        pytest.skip(why)
    doc = run(*CASES[name])
    path = GOLDEN / name
    if os.environ.get("VFIO_ADVISOR_UPDATE_GOLDEN"):
        path.write_text(json.dumps(doc, indent=2) + "\n")
    assert path.exists(), f"no golden file {path}; set VFIO_ADVISOR_UPDATE_GOLDEN=1 to write it"
    assert doc == json.loads(path.read_text()), (
        f"{name} differs from the golden file; if intended, regenerate (see module docstring)")
