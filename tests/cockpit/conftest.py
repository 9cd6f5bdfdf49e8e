"""The browser tier: Debian's cockpit-ws/cockpit-bridge serve the page on
loopback, Debian's chromium (through chromium-driver) renders it. Skipped,
with the reason, where either is missing. Screenshots go to ARTIFACTS."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.cockpit import backports, cockpitws, webdriver

ARTIFACTS = Path(os.environ.get("VFIO_ADVISOR_TEST_ARTIFACTS",
                                os.path.join(tempfile.gettempdir(), "vfio-advisor-test-artifacts"))) / "cockpit"


def pytest_terminal_summary(terminalreporter):
    if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"cockpit tier: screenshots in {ARTIFACTS}")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    why = cockpitws.missing() or webdriver.missing()
    if why:
        pytest.skip(f"browser tier needs Debian's cockpit and chromium: {why}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with webdriver.Browser(tmp_path_factory.mktemp("chromium"), width=1200, height=2000) as b:
        yield b


@pytest.fixture(scope="session", params=["287", "337"])
def cockpit(request):
    """The Cockpit the page is served with: the installed one (bookworm's
    287), and bookworm-backports' 337 unpacked beside it
    (tests/cockpit/backports.py), whose bridge is the Python rewrite. Each
    leg skips with the reason where it cannot be had."""
    why = cockpitws.missing()
    if request.param == "287":
        if why:
            pytest.skip(f"browser tier needs Debian's cockpit: {why}")
        build = cockpitws.installed()
        if not build.name.startswith("287"):
            pytest.skip(f"the installed cockpit is {build.name}, not bookworm's 287")
        return build
    try:
        prefix = backports.prepare()
    except backports.Unavailable as exc:
        pytest.skip(f"cockpit 337 from bookworm-backports: {exc}")
    return cockpitws.unpacked(prefix, backports.versions().split(", ")[0].split(" ")[1])
