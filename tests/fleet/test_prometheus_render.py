"""The Prometheus renderer (vfio_advisor.sinks.prometheus) on values the
product's Watcher derives from the lab's real captures, checked with an
independent reader of the text format and with Prometheus' own promtool."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

import pytest

from tests.fleet.exposition import parse
from tests.fleet.hostsim import CAPTURES, SimulatedHost
from vfio_advisor import __version__
from vfio_advisor.sinks.prometheus import (MODES, DeviceMetrics, OpenFinding, render,
                                           write_atomically)

NOW = 1764590000.25


def capture_count(moment: str, handler: str) -> int:
    """Sum of a vfio handler's per-CPU counts in a capture's /proc/interrupts,
    read here without the product's parser."""
    total = 0
    for line in (CAPTURES / moment / "proc/interrupts").read_text().splitlines()[1:]:
        if handler in line:
            fields = line.split()
            total += sum(int(f) for f in fields[1:] if f.isdigit())
    return total


def samples_of(text: str, name: str) -> dict:
    _, samples = parse(text)
    return {tuple(sorted(labels.items())): value for n, labels, value in samples if n == name}


def replay(domain: str, moments: list[str], **kw) -> SimulatedHost:
    host = SimulatedHost(domain, moments, **kw)
    while not host.done:
        host.step()
    return host


def test_stays_on_intx_values_from_the_capture():
    host = replay("edu", [f"stays-intx-{i}" for i in (1, 2, 3, 4)])
    text = host.metrics(NOW)
    meta, _ = parse(text)
    dev = (("bdf", "0000:00:03.0"), ("domain", "lab-edu"))
    totals = samples_of(text, "vfio_advisor_device_interrupts_total")
    expected = capture_count("stays-intx-4", "vfio-intx(0000:00:03.0)")
    assert expected > 0
    assert totals == {tuple(sorted(dev + (("mode", "intx"),))): expected}
    modes = samples_of(text, "vfio_advisor_device_mode")
    assert {dict(k)["mode"]: v for k, v in modes.items()} == {m: float(m == "intx") for m in MODES}
    assert samples_of(text, "vfio_advisor_device_interrupts_observable") == {dev: 1}
    assert samples_of(text, "vfio_advisor_findings") == {
        (("domain", "lab-edu"), ("rule", "VA6001"), ("severity", "warning")): 1}
    assert samples_of(text, "vfio_advisor_last_sample_timestamp_seconds") == {(): NOW}
    assert samples_of(text, "vfio_advisor_build_info") == {(("version", __version__),): 1}
    assert meta["vfio_advisor_device_interrupts_total"][0] == "counter"
    for name in ("device_mode", "device_interrupts_observable", "findings",
                 "last_sample_timestamp_seconds", "build_info"):
        assert meta[f"vfio_advisor_{name}"][0] == "gauge"
        assert meta[f"vfio_advisor_{name}"][1]  # a HELP text


def test_counter_series_follows_the_mode_switch():
    """switch-2: the edu counts on INTx; switch-4: on its MSI vector, whose
    count is a new series (mode is a label of the counter)."""
    host = SimulatedHost("switch", [f"switch-{i}" for i in (1, 2, 3, 4)])
    seen = {}
    while not host.done:
        moment = host.step()
        seen[moment] = samples_of(host.metrics(NOW), "vfio_advisor_device_interrupts_total")
    edu = ("bdf", "0000:00:03.0")

    def edu_series(moment):
        return {dict(k)["mode"]: v for k, v in seen[moment].items() if edu in k}

    assert edu_series("switch-2") == {"intx": capture_count("switch-2", "vfio-intx(0000:00:03.0)")}
    assert edu_series("switch-4") == {"msi": capture_count("switch-4", "vfio-msi[0](0000:00:03.0)")}
    assert edu_series("switch-4")["msi"] > 0


def test_label_values_are_escaped():
    name = 'win\\11 "gaming"\nvm'
    text = render([DeviceMetrics(name, "0000:01:00.0", "msix", 42)],
                  [OpenFinding(name, "VA6007", "info")], NOW, '1.0"rc\\1')
    assert r'domain="win\\11 \"gaming\"\nvm"' in text
    assert r'version="1.0\"rc\\1"' in text
    assert "\nvm" not in text.replace("\\nvm", "")  # no raw line feed inside a label
    totals = samples_of(text, "vfio_advisor_device_interrupts_total")
    assert totals == {(("bdf", "0000:01:00.0"), ("domain", name), ("mode", "msix")): 42}


def test_unobservable_vectors_are_marked_never_zero():
    text = render([DeviceMetrics("vm", "0000:01:00.0", "msix", 0, observable=False),
                   DeviceMetrics("vm", "0000:02:00.0", "msix", 7)], [], NOW, "x")
    totals = samples_of(text, "vfio_advisor_device_interrupts_total")
    assert [dict(k)["bdf"] for k in totals] == ["0000:02:00.0"]
    observable = {dict(k)["bdf"]: v for k, v in
                  samples_of(text, "vfio_advisor_device_interrupts_observable").items()}
    assert observable == {"0000:01:00.0": 0, "0000:02:00.0": 1}
    # its mode is still known and exported
    modes = samples_of(text, "vfio_advisor_device_mode")
    assert modes[(("bdf", "0000:01:00.0"), ("domain", "vm"), ("mode", "msix"))] == 1


def test_findings_are_counted_per_domain_rule_and_severity():
    text = render([], [OpenFinding("a", "VA6006", "info"), OpenFinding("a", "VA6006", "info"),
                       OpenFinding("b", "VA6005", "error"), OpenFinding(None, "VA8003", "info")],
                  NOW, "x")
    assert samples_of(text, "vfio_advisor_findings") == {
        (("domain", "a"), ("rule", "VA6006"), ("severity", "info")): 2,
        (("domain", "b"), ("rule", "VA6005"), ("severity", "error")): 1,
        (("domain", ""), ("rule", "VA8003"), ("severity", "info")): 1}


@pytest.mark.parametrize("devices, findings, now, message", [
    ([DeviceMetrics("vm", "0000:01:00.0", "posted", 1)], [], NOW, "mode 'posted' is not one of"),
    ([DeviceMetrics("vm", "0000:01:00.0", "msi", 1)] * 2, [], NOW, "given twice"),
    ([DeviceMetrics("vm", "0000:01:00.0", "msi", -1)], [], NOW, "negative"),
    ([], [OpenFinding("vm", "VA6001", "fatal")], NOW, "severity 'fatal'"),
    ([], [], float("nan"), "not a finite number"),
])
def test_bad_input_is_refused_with_a_message(devices, findings, now, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render(devices, findings, now, "x")


def test_series_count_is_bounded_per_device():
    """docs/metrics.md: per device 1 counter + 1 observable + len(MODES) mode
    series; findings at most one per (domain, rule, severity)."""
    devs = [DeviceMetrics(f"vm{i // 4}", f"0000:0{i % 4}:00.0", "msi", i) for i in range(12)]
    _, samples = parse(render(devs, [OpenFinding("vm0", "VA6007", "info")] * 5, NOW, "x"))
    assert len(samples) == 12 * (2 + len(MODES)) + 1 + 2


def promtool_check(text: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)


def test_promtool_accepts_the_output_on_every_scenario():
    outputs = [
        replay("edu", [f"stays-intx-{i}" for i in (1, 2, 3, 4)], storm_rate=2000).metrics(NOW),
        replay("switch", [f"switch-{i}" for i in (1, 2, 3, 4, 5)]).metrics(NOW),
        replay("shared", ["storm-shared-1", "storm-shared-2"], settle=0.0,
               storm_rate=2000).metrics(NOW),
        replay("modes", ["modes", "modes"], settle=0.0).metrics(NOW),
        render([DeviceMetrics('q"\\\nx', "0000:01:00.0", "msix", None, observable=False)],
               [OpenFinding(None, "VA8003", "info")], NOW, "0.1.0"),
    ]
    for text in outputs:
        run = promtool_check(text)
        assert run.returncode == 0 and run.stdout == "" and run.stderr == "", (run.stdout, run.stderr, text)


def test_promtool_catches_a_broken_file():
    """The check above can fail: promtool refuses a bad escape."""
    run = promtool_check('# TYPE x gauge\nx{a="\\q"} 1\n')
    assert run.returncode != 0


def test_write_atomically_replaces_whole_with_mode_0644(tmp_path):
    path = tmp_path / "vfio-advisor.prom"
    path.write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        write_atomically(str(path), "new\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vfio-advisor.prom"]


def test_write_atomically_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "vfio-advisor.prom"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(str(path), "half \udc80 written")  # a lone surrogate cannot be UTF-8
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vfio-advisor.prom"]


def test_write_atomically_writes_every_piece_past_iov_max(tmp_path):
    """Pieces (str as UTF-8, bytes, bytearray) go to writev(2) at most
    1,024 at a time (Linux's UIO_MAXIOV): 3,000 of them make the file."""
    path = tmp_path / "status.json"
    pieces = [[f"{k}\u00e9,", f"{k},".encode(), bytearray(b"%d;" % k)][k % 3] for k in range(3000)]
    write_atomically(str(path), iter(pieces), durable=False)
    assert path.read_bytes() == b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in pieces)
    pieces[2] += b"grows"  # the sink's bytearray is not held by the write (no BufferError)


def test_a_file_rewritten_at_each_sample_swaps_names_instead_of_renaming_over(tmp_path, monkeypatch):
    """durable=False (the metrics and status files) exchanges the two names
    with renameat2(RENAME_EXCHANGE) and deletes the old text, so ext4 does
    not write every version to the disk (sinks/base.py _exchange): rename
    over the old file is not called. A reader holding the old file keeps it
    whole; nothing is left beside the new file."""
    path = tmp_path / "vfio-advisor.prom"
    path.write_text("old\n")
    reader = open(path)

    def no_rename_over(src, dst):
        raise AssertionError(f"renamed over {dst}")

    monkeypatch.setattr(os, "replace", no_rename_over)
    write_atomically(str(path), "new\n", durable=False)
    assert path.read_text() == "new\n" and reader.read() == "old\n"
    reader.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vfio-advisor.prom"]


def test_the_first_write_of_such_a_file_renames(tmp_path):
    """No old file to exchange with: renameat2 says ENOENT and the new file
    is renamed into place."""
    path = tmp_path / "status.json"
    write_atomically(str(path), "first\n", durable=False)
    write_atomically(str(path), "second\n", durable=False)
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_write_atomically_resumes_short_writes(tmp_path, monkeypatch):
    """writev(2) may write less than asked (a signal, the disk's last
    blocks): the rest follows from where it stopped, inside a piece or
    between two."""
    real_write = os.write
    limits = iter([1, 3, 700, 2, 5000, 1] * 1000)
    calls = []

    def short_writev(fd, buffers):
        calls.append(len(buffers))
        data = b"".join(bytes(b) for b in buffers)
        return real_write(fd, data[:next(limits)])

    monkeypatch.setattr(os, "writev", short_writev)
    path = tmp_path / "m.prom"
    pieces = [bytearray(b"x" * (k % 37)) + b"|" for k in range(2500)]
    write_atomically(str(path), pieces, durable=False)
    assert path.read_bytes() == b"".join(pieces)
    assert max(calls) <= 1024 and len(calls) > 3


def test_no_counter_without_vectors():
    """A device with no vfio vector (mode none) or not sampled yet (unknown)
    has a mode but no counter series, whatever count the caller passes."""
    text = render([DeviceMetrics("vm", "0000:01:00.0", "none", 0),
                   DeviceMetrics("vm", "0000:02:00.0", "unknown", 0)], [], NOW, "x")
    assert samples_of(text, "vfio_advisor_device_interrupts_total") == {}
    modes = {(dict(k)["bdf"], dict(k)["mode"]) for k, v in samples_of(text, "vfio_advisor_device_mode").items() if v}
    assert modes == {("0000:01:00.0", "none"), ("0000:02:00.0", "unknown")}


def test_a_device_s_kept_lines_follow_its_mode_and_observability():
    """The lines of a device but its count are built once and kept
    (prometheus._device_lines): a sample that changes its mode, its
    observability or its count renders as a first render does, with nothing
    kept."""
    from vfio_advisor.sinks import prometheus

    states = [("msix", 10, True), ("msix", 11, True), ("msix", 11, False), ("intx", 12, True),
              ("none", 12, True), ("msix", 13, True), ("msix", 14, 0), ("unknown", None, True)]
    for k, (mode, count, observable) in enumerate(states):
        devices = [DeviceMetrics('vm "a"', "0000:01:00.0", mode, count, observable),
                   DeviceMetrics("vm-b", "0000:02:00.0", states[-1 - k][0], 7, True)]
        kept = render(devices, [], NOW + k, "x")
        prometheus._device_lines.cache_clear()
        assert kept == render(devices, [], NOW + k, "x"), states[k]


def test_kept_families_follow_every_mode_observability_and_device_change():
    """render(..., kept) reuses the observable and mode families joined at
    the last call (prometheus.Kept): over a run of samples that change a
    mode, an observability, the devices followed, or only the counts, each
    text is what a call with nothing kept renders."""
    from vfio_advisor.sinks.prometheus import Kept

    kept = Kept()
    states = [("msix", True, 2), ("msix", True, 2), ("intx", True, 2), ("intx", False, 2),
              ("intx", False, 1), ("intx", False, 3), ("none", True, 3), ("none", True, 0), ("msix", True, 2)]
    for k, (mode, observable, n) in enumerate(states):
        devices = [DeviceMetrics(f"vm{i}", f"0000:0{i}:00.0", mode if i == 0 else "msix", 100 + k, observable)
                   for i in range(n)]
        text = render(devices, [], NOW + k, "x", kept)
        assert text == render(devices, [], NOW + k, "x"), states[k]
    # The second call of an unchanged state kept the first one's families.
    first = Kept()
    devices = [DeviceMetrics("vm", "0000:01:00.0", "msix", 1)]
    render(devices, [], NOW, "x", first)
    joined = first.modes
    render([DeviceMetrics("vm", "0000:01:00.0", "msix", 2)], [], NOW + 1, "x", first)
    assert first.modes is joined
