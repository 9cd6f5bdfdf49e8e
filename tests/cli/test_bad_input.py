"""Bad input gets one clear line and the right exit status, never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


def run(*args, env=None, stdin=None):
    e = dict(os.environ, NO_COLOR="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=120, env=e, input=stdin)


def assert_clean_failure(out, code=2):
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip(), "a failure must say why"
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("content", [
    b"", b"not xml at all", b"<domain", b"<node/>", b"<domain type='kvm'/>",
    b"<domain type='kvm'><name>x</name><devices><hostdev mode='subsystem' type='pci'><source>"
    b"<address domain='0x0000' bus='0x1ff' slot='0' function='0'/></source></hostdev></devices></domain>",
    b"\xff\xfe\x00garbage\x00",
])
def test_bad_domain_xml(tmp_path, content):
    f = tmp_path / "bad.xml"
    f.write_bytes(content)
    assert_clean_failure(run("advise", "--xml", str(f), "--host-root", str(tmp_path)))


def test_missing_xml_file(tmp_path):
    assert_clean_failure(run("advise", "--xml", str(tmp_path / "nope.xml")))


def test_missing_host_root(tmp_path):
    assert_clean_failure(run("advise", "--xml", str(tmp_path / "x.xml"),
                             "--host-root", str(tmp_path / "nowhere")))


def test_failed_connection():
    out = run("advise", "--connect", "test:///nonexistent/node.xml")
    assert_clean_failure(out)
    assert "cannot connect" in out.stderr


def test_usage_errors():
    assert_clean_failure(run("advise", "--format", "yaml"))
    assert_clean_failure(run("device", "not-a-bdf"))
    assert_clean_failure(run("advise", "--sample", "-1", "--xml", "x"))


def test_host_without_anything_still_analyses(tmp_path):
    """A domain that loads is analysed even when sysfs and procfs are absent:
    each device says which checks were skipped, and the status follows findings."""
    domain = DATA / "corpus" / "user-domains" / "vanities_win10-i440fx.xml"
    if not domain.exists():
        pytest.skip("corpus copy not present")
    out = run("advise", "--xml", str(domain), "--host-root", str(tmp_path), "--format", "json")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "vfio-advisor/advice/1"
    (dom,) = doc["domains"]
    assert dom["chipset"] == "i440fx"
    assert dom["devices"], "the hostdevs are listed even though the host lacks them"
    for dev in dom["devices"]:
        assert dev["found_on_host"] is False
        assert any(f["rule"] == "VA8001" for f in dev["findings"])
    assert any(f["rule"] == "VA8002" and f["subject"] is None for f in dom["findings"])


def test_unreadable_sysfs_file(tmp_path):
    """A config file that cannot be read at all (a directory in its place)."""
    dev = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    (dev / "config").mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    xml = tmp_path / "d.xml"
    xml.write_text("<domain type='kvm'><name>d</name><os><type machine='q35'>hvm</type></os>"
                   "<devices><hostdev mode='subsystem' type='pci'><source><address domain='0' "
                   "bus='1' slot='0' function='0'/></source></hostdev></devices></domain>")
    out = run("advise", "--xml", str(xml), "--host-root", str(tmp_path), "--format", "json")
    assert out.returncode == 0, out.stderr  # VA8002 is info; nothing else can be checked
    doc = json.loads(out.stdout)
    dev = doc["domains"][0]["devices"][0]
    assert [f["rule"] for f in dev["findings"]] == ["VA8002"]
    assert dev["found_on_host"] is True
    assert any(u.startswith("config:") for u in dev["unreadable"])
    assert dev["capabilities"]["msi"] == "unknown"


def test_proc_interrupts_a_directory(tmp_path):
    """/proc/interrupts that cannot be read (a directory in its place; the
    unprivileged case is in test_unprivileged.py): one VA8002 line saying so,
    exit 0 (info only), no traceback, no interrupt-mode advice."""
    (tmp_path / "proc/interrupts").mkdir(parents=True)
    xml = tmp_path / "d.xml"
    xml.write_text("<domain type='kvm'><name>d</name><os><type machine='q35'>hvm</type></os>"
                   "<devices><hostdev mode='subsystem' type='pci'><source><address domain='0' "
                   "bus='1' slot='0' function='0'/></source></hostdev></devices></domain>")
    out = run("advise", "--xml", str(xml), "--host-root", str(tmp_path))
    assert "Traceback" not in out.stdout + out.stderr and out.stderr == ""
    assert out.returncode == 1  # VA8001: the device is not in this tree
    lines = [ln for ln in out.stdout.splitlines() if "VA8002 Host interrupts" in ln]
    assert lines == ["  info    VA8002 Host interrupts could not be read (proc/interrupts: Is a directory); "
                     "interrupt mode and line sharing were not checked."]


def _address_space_limit():
    # /dev/zero never ends: an unbounded read stops only at MemoryError.
    import resource  # noqa: PLC0415
    resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))


@pytest.mark.parametrize("command", [["advise"], ["guest-irqs"], ["fix"]])
def test_xml_from_a_device_is_bounded(command):
    """A device or pipe reports size 0, so the size check alone passes it;
    the read itself stops one byte past the limit."""
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", *command, "--xml", "/dev/zero",
                          "--host-root", str(DATA.parent / "data")], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"),
                         preexec_fn=_address_space_limit)
    assert_clean_failure(out)
    assert "/dev/zero" in out.stderr and "too large for a domain XML" in out.stderr, out.stderr


def test_xml_on_stdin_over_the_limit_is_refused(tmp_path):
    from vfio_advisor.sources import MAX_XML_BYTES  # noqa: PLC0415

    # Small comments, each one well formed: only the size is wrong.
    pad = "<!-- padding -->\n" * (MAX_XML_BYTES // 17 + 1)
    xml = f"<domain type='kvm'><name>big</name>{pad}<devices/></domain>"
    out = run("advise", "--xml", "/dev/stdin", "--host-root", str(tmp_path), stdin=xml)
    assert_clean_failure(out)
    assert f"/dev/stdin: more than {MAX_XML_BYTES} bytes is too large for a domain XML" in out.stderr
