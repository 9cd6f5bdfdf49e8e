"""--sample reads /proc/interrupts twice; snapshot archives what advise reads
and replays to the same advice. Host states are the lab's real captures
(lab/captures/ORIGIN.md): an MSI-capable edu on vfio-intx whose count goes
from 300 to 600 between two moments."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
DOMAIN = REPO / "tests/data/domains/lab/edu.xml"
EDU = "0000:00:03.0"


def host(tmp_path: Path, moment: str) -> Path:
    root = tmp_path / "host"
    shutil.copytree(CAPTURES / moment, root, symlinks=True)
    return root


def run(*args):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"))


def edu(doc):
    return next(d for d in doc["domains"][0]["devices"] if d["host_address"] == EDU)


def test_sample_sees_rising_intx(tmp_path):
    root = host(tmp_path, "stays-intx-2")  # 300 INTx counted
    table = root / "proc/interrupts"
    # The swap must fall between advise's two reads, whatever the load: an
    # atime in the past is moved by the first read (relatime updates an atime
    # older than the mtime), and only then is the second moment put in place.
    os.utime(table, (0, time.time()))
    first_read = threading.Event()

    def advance():
        deadline = time.monotonic() + 30
        while os.stat(table).st_atime == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        first_read.set()
        shutil.copy(CAPTURES / "stays-intx-3/proc/interrupts", table)  # 600

    t = threading.Thread(target=advance)
    t.start()
    out = run("advise", "--xml", str(DOMAIN), "--host-root", str(root), "--sample", "1.5",
              "--format", "json")
    t.join()
    if not first_read.is_set():
        pytest.skip("this filesystem does not update atime (noatime): the first read cannot be seen")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["host"]["sample_seconds"] == 1.5
    dev = edu(doc)
    assert dev["host_interrupts"]["mode"] == "intx"
    assert dev["host_interrupts"]["intx_delta"] == 300
    (f,) = [f for f in dev["findings"] if f["rule"] == "VA1001"]
    assert "rose by 300" in f["message"]


def test_sample_without_change_keeps_the_finding_and_says_it_proves_nothing(tmp_path):
    """An INTx line that did not move while advise sampled proves nothing
    (no guest driver bound yet, or the device idle): the static VA1001 (the
    line has counted 600) stays, marked inconclusive, with what to do."""
    root = host(tmp_path, "stays-intx-3")
    out = run("advise", "--xml", str(DOMAIN), "--host-root", str(root), "--sample", "0.3",
              "--format", "json")
    assert out.returncode == 1, out.stderr  # a warning stands
    doc = json.loads(out.stdout)
    assert edu(doc)["host_interrupts"]["intx_delta"] == 0
    (f,) = [f for f in edu(doc)["findings"] if f["rule"] == "VA1001"]
    assert "inconclusive" in f["message"] and "while the device is in use" in f["message"]
    assert f["evidence"]["sample"] == "inconclusive: no INTx in 0.3 s"
    text = run("advise", "--xml", str(DOMAIN), "--host-root", str(root), "--sample", "0.3")
    assert "VA1001" in text.stdout and "inconclusive" in text.stdout


def test_snapshot_replays_to_the_same_advice(tmp_path):
    root = host(tmp_path, "shared")
    xml = REPO / "tests/data/domains/lab/shared.xml"
    direct = run("advise", "--xml", str(xml), "--host-root", str(root), "--format", "json")
    snap = tmp_path / "snap.tar.gz"
    made = run("snapshot", "-o", str(snap), "--xml", str(xml), "--host-root", str(root))
    assert made.returncode == 0, made.stderr
    with tarfile.open(snap) as tar:
        names = set(tar.getnames())
    assert "proc/interrupts" in names and "domains/lab-shared.xml" in names
    assert "sys/bus/pci/devices/0000:00:07.0" in names
    assert "sys/devices/pci0000:00/0000:00:07.0/config" in names
    # exactly what the tool reads: the other PCI devices of the capture stay out
    assert not any("0000:00:1f.2" in n for n in names)
    replay = run("advise", "--host-root", str(snap), "--format", "json")
    assert replay.returncode == direct.returncode, replay.stderr
    a, b = json.loads(direct.stdout), json.loads(replay.stdout)
    for doc in (a, b):
        doc["host"]["root"] = None
    assert a["domains"] == b["domains"]
    assert a["summary"] == b["summary"] and a["summary"]["warning"] >= 1


def test_text_output_no_colour_and_remedy(tmp_path):
    root = host(tmp_path, "stays-intx-3")
    out = run("advise", "--xml", str(DOMAIN), "--host-root", str(root))
    assert out.returncode == 1
    assert "\033[" not in out.stdout
    assert "VA1001" in out.stdout and "snd_hda_intel" not in out.stdout
    assert "modinfo" in out.stdout  # Linux guest, no known MSI option for this device
    assert "vfio-advisor explain VA1001" in out.stdout


def test_sample_of_a_snapshot_is_refused_not_called_inconclusive(tmp_path):
    """A snapshot's counters cannot move: sampling it would print "sample
    again while the device is in use" about a device that is not running."""
    root = host(tmp_path, "stays-intx-2")
    snap = tmp_path / "snap.tar.gz"
    made = run("snapshot", "-o", str(snap), "--xml", str(DOMAIN), "--host-root", str(root))
    assert made.returncode == 0, made.stderr
    out = run("advise", "--host-root", str(snap), "--sample", "0.2")
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert out.stderr.count("\n") == 1 and "--sample needs a live host" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
