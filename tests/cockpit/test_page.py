"""The Cockpit page in a real browser: Debian's cockpit-ws and cockpit-bridge
(started here on 127.0.0.1, stopped after) serve cockpit/ and run the real
vfio-advisor for it; Debian's chromium renders it. Every assertion reads the
rendered DOM and compares it with what the product itself prints (advise,
guest-irqs and fix in JSON) or wrote (the daemon's status file).

Behind the page: the demo host (examples/demo-host), and a lab replay with
the real daemon running against libvirt's test driver, whose device moves
from INTx to MSI. Bad states (no daemon, no vfio-advisor, a domain gone, an
unprivileged apply) must each end in a message, with no console error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import nobody
from tests.cockpit import backports, cockpitws
from tests.cockpit.cockpitws import DEMO, CockpitServer, demo_config
from tests.cockpit.conftest import ARTIFACTS
from tests.lab.moments import Replay
from vfio_advisor.sinks.status import device_points

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)
FIX_DATA = REPO / "tests/data/fix"
NODE_NS = "http://libvirt.org/schemas/domain/test/1.0"
READY = "return document.body !== null && document.body.getAttribute('data-ready') === 'true'"


def cli(*args: str, ok=(0,)) -> dict:
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode in ok, out.stderr
    return json.loads(out.stdout)


def demo_target() -> list[str]:
    return ["--connect", f"test://{DEMO / 'node.xml'}", "--host-root", str(DEMO / "root")]


def load(browser, server: CockpitServer, fragment: str = "") -> None:
    browser.go("about:blank")  # a new document even when only the fragment differs
    browser.console()  # drop what an earlier page logged
    browser.go(server.page_url(fragment))
    browser.wait(READY, timeout=90, what=f"the page {fragment or '/'} to finish loading")


def console_problems(browser) -> list[str]:
    """Console errors, and anything the page itself logged."""
    return [e["message"] for e in browser.console()
            if e.get("level") == "SEVERE" or "vfio-advisor.js" in e.get("message", "")]


def shot(browser, cockpit, name: str) -> Path:
    path = browser.screenshot(ARTIFACTS / f"{name}-cockpit{cockpit.name.split('-')[0]}.png")
    print(f"screenshot: {path}")
    return path


def alert_text(browser, kind: str) -> str:
    return browser.js("const a = document.querySelector(`[data-alert='${arguments[0]}']`);"
                      "return a ? a.textContent : null", kind)


# --- the demo host -----------------------------------------------------------------------------

def test_host_view_lists_each_domain_with_its_findings_by_severity(browser, cockpit, tmp_path):
    advice = cli("advise", *demo_target(), "--format", "json", ok=(0, 1))
    with CockpitServer(tmp_path, demo_config(str(tmp_path / "no-daemon/status.json")), path=[VENV_BIN],
                       cockpit=cockpit) as server:
        load(browser, server)
        shot(browser, cockpit, "host-view-demo")
        rows = browser.js("return [...document.querySelectorAll('#domains tr[data-domain]')].map(r => ["
                          "r.getAttribute('data-domain'), r.querySelector('[data-counts]').getAttribute('data-counts'),"
                          "r.querySelector('[data-vm-link]').getAttribute('href'),"
                          "r.querySelector('[data-machines-link]').getAttribute('href')])")
        shown = {f"{name}": (counts, href, machines) for name, counts, href, machines in rows}
        findings = browser.js("return [...document.querySelectorAll('[data-domain-findings]')].flatMap(s => "
                              "[...s.querySelectorAll('[data-finding]')].map(f => [s.getAttribute('data-domain-findings'),"
                              "f.getAttribute('data-finding'), f.getAttribute('data-severity'), f.getAttribute('data-subject')]))")
        remapping = browser.js("return document.querySelector('[data-field=interrupt-remapping]').textContent")
        daemon_note = alert_text(browser, "daemon")
        problems = console_problems(browser)
    with_devices = [d for d in advice["domains"] if d["devices"]]
    assert sorted(shown) == sorted(d["name"] for d in with_devices)
    for d in with_devices:
        counts = " ".join(f"{s}={sum(f['severity'] == s for f in d['findings'])}" for s in ("error", "warning", "info"))
        # cockpit-machines' page for the VM where the bridge has that package, else a note
        machines = (f"/machines#vm?name={d['name']}&connection=system"
                    if Path("/usr/share/cockpit/machines/manifest.json").exists() else None)
        assert shown[d["name"]] == (counts, f"#/vm/{d['name']}", machines)
    want = sorted((d["name"], f["rule"], f["severity"], f["subject"] or "") for d in with_devices for f in d["findings"])
    assert sorted(map(tuple, findings)) == want
    # by severity within each domain: errors before warnings before infos
    order = {"error": 0, "warning": 1, "info": 2}
    for name in {f[0] for f in findings}:
        sev = [order[f[2]] for f in findings if f[0] == name]
        assert sev == sorted(sev)
    assert remapping.startswith("on" if advice["host"]["interrupt_remapping"] else "off")
    assert daemon_note and "not running" in daemon_note and "no-daemon/status.json" in daemon_note
    assert problems == []


def expected_map(irqs: dict) -> tuple[set, set, set]:
    """Nodes, edges and the nodes marked shared from guest-irqs --format json:
    each INTx function -> its root-bus slot pin -> its PIRQ link -> its
    IRQ/GSI; shared: an IRQ that several functions reach, and each function
    whose `shares_with` is not empty."""
    nodes, edges, users, sharing = set(), set(), {}, set()
    for f in irqs["functions"]:
        if f["pin"] is None and f["irq"] is None:
            continue
        chain = [f"fn:{f['guest_address']}"]
        if f["root_slot"] is not None and f["root_pin"]:
            chain.append(f"pin:{f['root_slot']}:{f['root_pin']}")
        if f["pirq"]:
            chain.append(f"link:{f['pirq']}")
        if f["irq"] is not None:
            chain.append(f"irq:{f['irq']}")
            users.setdefault(f"irq:{f['irq']}", set()).add(f["guest_address"])
        if f["shares_with"]:
            sharing.add(chain[0])
        nodes.update(chain)
        edges.update(f"{a}>{b}" for a, b in zip(chain, chain[1:]))
    return nodes, edges, sharing | {n for n, fns in users.items() if len(fns) > 1}


@pytest.mark.parametrize("domain", ["oldbox", "win11"])
def test_vm_view_draws_the_guest_intx_map_and_the_findings(browser, cockpit, tmp_path, domain):
    irqs = cli("guest-irqs", domain, *demo_target(), "--format", "json", ok=(0, 1))
    advice = cli("advise", *demo_target(), "--format", "json", ok=(0, 1))
    [dom] = [d for d in advice["domains"] if d["name"] == domain]
    with CockpitServer(tmp_path, demo_config(str(tmp_path / "none.json")), path=[VENV_BIN],
                       cockpit=cockpit) as server:
        load(browser, server, f"/vm/{domain}")
        shot(browser, cockpit, f"vm-view-demo-{domain}")
        got = browser.js("const m = document.querySelector('#intx-map svg');"
                         "return {nodes: [...m.querySelectorAll('[data-node]')].map(n => n.getAttribute('data-node')),"
                         "shared: [...m.querySelectorAll('[data-node][data-shared=true]')].map(n => n.getAttribute('data-node')),"
                         "edges: [...m.querySelectorAll('[data-edge]')].map(e => e.getAttribute('data-edge')),"
                         "findings: [...document.querySelectorAll('#findings [data-finding]')].map(f => "
                         "[f.getAttribute('data-finding'), f.getAttribute('data-subject')]),"
                         "devices: [...document.querySelectorAll('#devices tr[data-device]')].map(r => "
                         "[r.getAttribute('data-device'), r.querySelector('[data-field=vectors]').textContent])}")
        guest_note = alert_text(browser, "guest")
        problems = console_problems(browser)
    nodes, edges, shared = expected_map(irqs)
    assert len(got["nodes"]) == len(set(got["nodes"]))  # each node drawn once
    assert set(got["nodes"]) == nodes and set(got["edges"]) == edges and set(got["shared"]) == shared
    # guest-irqs' shares_with and the drawn lines agree: a function that
    # shares its line reaches an IRQ node marked shared.
    for f in irqs["functions"]:
        if f["shares_with"] and f["irq"] is not None:
            assert f"irq:{f['irq']}" in got["shared"]
    assert sorted(map(tuple, got["findings"])) == sorted((f["rule"], f["subject"] or "") for f in dom["findings"])
    assert got["devices"] == [[d["host_address"], ", ".join(map(str, d["host_interrupts"]["irqs"])) or "none"]
                              for d in dom["devices"]]
    # `guest` (the guest agent) is unavailable for a test-driver domain: said, not blank.
    assert guest_note
    assert problems == []


# --- the real daemon over a lab replay: INTx -> MSI ----------------------------------------------

def test_plot_follows_the_daemons_window_through_intx_to_msi(browser, cockpit, tmp_path):
    moments = [f"switch-{i}" for i in (1, 2, 3, 4)]
    replay = Replay(tmp_path, moments)
    node = tmp_path / "node.xml"
    node.write_text(f"<node xmlns:test='{NODE_NS}'>{(REPO / 'tests/data/domains/lab/switch.xml').read_text()}</node>")
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ninterval = 0.25\nsettle = 0\n")
    state = tmp_path / "state"
    status = state / "status.json"
    daemon = subprocess.Popen([sys.executable, "-m", "vfio_advisor", "daemon", "--connect", f"test://{node}",
                               "--host-root", str(replay.root), "--config", str(config), "--state-dir", str(state)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    page_config = {"connect": f"test://{node}", "host_root": str(replay.root), "status_file": str(status)}
    count_points = "return document.querySelectorAll('#rates svg[data-plot] circle[data-t]').length"
    server = CockpitServer(tmp_path / "ws", page_config, path=[VENV_BIN], cockpit=cockpit)
    try:
        end = time.monotonic() + 30
        while not status.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert status.exists(), "the daemon wrote no status file"
        # The page is open while the daemon runs: it follows the file.
        server.start()
        load(browser, server, "/vm/lab-switch")
        running_note = alert_text(browser, "daemon")
        seen = [browser.js(count_points)]
        for i in range(1, len(moments)):
            time.sleep(1.0)  # four samples at each moment
            replay.step(i)
            seen.append(browser.js(count_points))
        time.sleep(1.0)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    try:
        assert daemon.returncode == 0, err
        window = json.loads(status.read_text())
        # the stop reaches the page through the file (its poll), with the last window
        browser.wait("const a = document.querySelector('[data-alert=daemon]');"
                     "return a !== null && a.textContent.includes('stopped')", timeout=15, what="the stop")
        browser.wait(f"return document.querySelectorAll('#rates svg[data-plot] circle[data-t]').length === "
                     f"{sum(len(d['rates']) for d in window['devices'] if d['domain'] == 'lab-switch')}",
                     timeout=10, what="the last window drawn")
        shot(browser, cockpit, "vm-view-lab-switch-intx-to-msi")
        plots = browser.js("return Object.fromEntries([...document.querySelectorAll('#rates svg[data-plot]')].map(p => "
                           "[p.getAttribute('data-plot'), {points: [...p.querySelectorAll('circle[data-t]')].map(c => "
                           "[Number(c.getAttribute('data-t')), c.getAttribute('data-rate') === 'null' ? null : "
                           "Number(c.getAttribute('data-rate')), c.getAttribute('data-mode')]),"
                           "marks: [...p.querySelectorAll('[data-mark]')].map(m => [m.getAttribute('data-rule'),"
                           "m.getAttribute('data-mark'), Number(m.getAttribute('data-t'))])}]))")
        host_modes = browser.js("return Object.fromEntries([...document.querySelectorAll('#devices tr[data-device]')]"
                                ".map(r => [r.getAttribute('data-device'),"
                                " r.querySelector('[data-field=host-mode]').textContent]))")
        stopped = alert_text(browser, "daemon")
        problems = console_problems(browser)
    finally:
        server.stop()
    # while it ran: no "not running" note, and the plots grew sample by sample
    assert running_note is None
    assert seen == sorted(seen) and seen[-1] > seen[0], seen
    devices = {d["bdf"]: d for d in window["devices"] if d["domain"] == "lab-switch"}
    assert sorted(plots) == sorted(devices)
    # the devices' table follows the daemon too: the edu shows the MSI it
    # moved to while the view was open, not the INTx of the first read
    assert host_modes == {bdf: f"{dev['mode']} (daemon)" for bdf, dev in devices.items()}
    # the file's points as the page must rebuild them from its times, rates and modes
    points = {bdf: device_points(window, dev) for bdf, dev in devices.items()}
    for bdf, dev in devices.items():
        assert plots[bdf]["points"] == points[bdf]
        marks = sorted([f["rule"], kind, f[kind]] for f in window["findings"]
                       if f["domain"] == "lab-switch" and f["subject"] in (bdf, None)
                       for kind in ("opened", "closed") if f[kind] is not None
                       and points[bdf][0][0] <= f[kind] <= max(points[bdf][-1][0], points[bdf][0][0] + 1))
        assert sorted(plots[bdf]["marks"]) == marks
    # The edu device: counted on INTx, then on MSI; VA6001 opened, and closed
    # when it left INTx (its VA6002 is a mark of its own).
    edu = points["0000:00:03.0"]
    modes = [m for _, _, m in edu]
    assert "intx" in modes and "msi" in modes and modes.index("msi") > modes.index("intx")
    assert any(r and r > 0 for _, r, m in edu if m == "intx")
    edu_marks = {(rule, kind) for rule, kind, _ in plots["0000:00:03.0"]["marks"]}
    assert {("VA6001", "opened"), ("VA6001", "closed"), ("VA6002", "opened")} <= edu_marks
    # VA6006 ("no interrupt at all") closes for the edu when it counts, while
    # the virtio-rng's, which never counts, stays open until the stop.
    edu_va6006 = [f for f in window["findings"] if f["rule"] == "VA6006" and f["subject"] == "0000:00:03.0"][0]
    rng_va6006 = [f for f in window["findings"] if f["rule"] == "VA6006" and f["subject"] == "0000:00:05.0"][0]
    assert edu_va6006["closed"] < rng_va6006["closed"] == window["daemon"]["updated"]
    va6001 = [f for f in window["findings"] if f["rule"] == "VA6001"][0]
    first_msi = next(t for t, _, m in edu if m == "msi")
    assert va6001["closed"] is not None and va6001["closed"] <= first_msi + 1
    # The daemon stopped: the page says so (the plots stay, from its last window).
    assert stopped and "stopped" in stopped
    assert problems == []


# --- bad states --------------------------------------------------------------------------------

def test_without_vfio_advisor_the_page_says_so(browser, cockpit, tmp_path):
    with CockpitServer(tmp_path, demo_config(str(tmp_path / "none.json")), path=[], cockpit=cockpit) as server:
        assert not any(os.access(os.path.join(d, "vfio-advisor"), os.X_OK)
                       for d in server.env["PATH"].split(":")), "a vfio-advisor is installed system-wide"
        load(browser, server)
        text = alert_text(browser, "advise")
        problems = console_problems(browser)
    assert text and "vfio-advisor is not installed" in text
    assert problems == []


def test_a_status_file_of_another_schema_is_refused_with_a_message(browser, cockpit, tmp_path):
    """A daemon of the schema before (points in every device) left its file
    behind: the page names the schema it reads and the one it found, and
    plots nothing rather than misread it."""
    status = tmp_path / "status.json"
    status.write_text(json.dumps({
        "schema": "vfio-advisor/status/1",
        "daemon": {"pid": 1, "running": True, "started": time.time(), "updated": time.time(), "interval": 5.0},
        "host": None, "domains": {}, "findings": [], "last_event": None,
        "devices": [{"domain": "win11", "bdf": "0000:01:00.0", "mode": "msi", "count": 10, "observable": True,
                     "points": [[time.time(), 1.0, "msi"]]}]}))
    with CockpitServer(tmp_path / "ws", demo_config(str(status)), path=[VENV_BIN], cockpit=cockpit) as server:
        load(browser, server)
        text = alert_text(browser, "daemon")
        problems = console_problems(browser)
    assert text and "not readable as vfio-advisor/status/2 (schema vfio-advisor/status/1)" in text
    assert problems == []


def test_a_domain_that_is_gone_says_so(browser, cockpit, tmp_path):
    with CockpitServer(tmp_path, demo_config(str(tmp_path / "none.json")), path=[VENV_BIN],
                       cockpit=cockpit) as server:
        load(browser, server, "/vm/gone-vm")
        text = alert_text(browser, "domain")
        problems = console_problems(browser)
    assert text and "No domain named gone-vm" in text
    assert problems == []


def fix_node(directory: Path) -> str:
    """A test-driver node with q35-two-intx shut off: fix has a verified diff for it."""
    two = (FIX_DATA / "q35-two-intx.xml").read_text().replace(
        "</domain>", f"<test:runstate xmlns:test='{NODE_NS}'>5</test:runstate></domain>")
    path = directory / "node.xml"
    path.write_text(f"<node xmlns:test='{NODE_NS}'>{two}</node>")
    return f"test://{path}"


def open_and_confirm_apply(browser) -> str:
    browser.wait("return document.getElementById('apply-fix') !== null", what="the Apply button")
    browser.js("document.getElementById('apply-fix').click()")
    browser.wait("return !document.getElementById('dialog').hidden", what="the confirmation")
    browser.js("document.getElementById('dialog-ok').click()")
    return browser.wait("const a = document.querySelector('#apply-result [data-alert=apply]');"
                        "return a ? a.textContent : null", timeout=90, what="the apply result")


def test_apply_as_administrator_says_where_the_backup_went(browser, cockpit, tmp_path):
    uri = fix_node(tmp_path)
    plan = cli("fix", "two-intx", "--connect", uri, "--host-root", str(DEMO / "root"), "--format", "json")
    config = {"connect": uri, "host_root": str(DEMO / "root"), "status_file": str(tmp_path / "none.json"),
              "state_dir": str(tmp_path / "state")}
    with CockpitServer(tmp_path / "ws", config, path=[VENV_BIN], cockpit=cockpit) as server:
        load(browser, server, "/vm/two-intx")
        diff = browser.js("return document.querySelector('#fix [data-diff]').textContent")
        text = open_and_confirm_apply(browser)
        shot(browser, cockpit, "vm-view-applied")
        problems = console_problems(browser)
    assert diff.rstrip("\n") == plan["domains"][0]["diff"].rstrip("\n")
    backups = list((tmp_path / "state/fix-backups").iterdir())
    assert len(backups) == 1 and str(backups[0]) in text and "Applied" in text
    assert problems == []


def test_unprivileged_apply_is_refused_with_a_message(browser, cockpit):
    nobody.require()
    # The bridge, as nobody, spawns this clone's vfio-advisor on the clone's
    # demo tree: a clone in a 0700 directory (/root, mktemp -d) is out of its reach.
    if os.geteuid() == 0 and subprocess.run(
            [*nobody.SETPRIV, "sh", "-c", 'for p; do [ -x "$p" ] || exit 1; done', "sh",
             f"{VENV_BIN}/vfio-advisor", str(DEMO / "root")], capture_output=True).returncode != 0:
        pytest.skip("nobody cannot reach this clone (it lives under a 0700 directory): "
                    "the unprivileged leg needs the clone's venv and demo tree readable by nobody")
    # nobody cannot enter pytest's 0700 tmp: a world-traversable directory of its own.
    work = Path(tempfile.mkdtemp(prefix="vfio-advisor-cockpit-"))
    os.chmod(work, 0o755)
    try:
        uri = fix_node(work)
        config = {"connect": uri, "host_root": str(DEMO / "root"), "status_file": str(work / "none.json"),
                  "state_dir": str(work / "state")}
        user = nobody.SETPRIV if os.geteuid() == 0 else []
        with CockpitServer(work / "ws", config, path=[VENV_BIN], user=user, cockpit=cockpit) as server:
            (work / "ws").chmod(0o755)
            load(browser, server, "/vm/two-intx")
            text = open_and_confirm_apply(browser)
            shot(browser, cockpit, "vm-view-apply-refused")
            problems = console_problems(browser)
        assert "needs administrative access" in text and "nothing was changed" in text
        assert not (work / "state/fix-backups").exists()
        assert problems == []
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


# --- where install puts it ------------------------------------------------------------------------

def test_install_places_the_page_that_cockpit_serves(browser, cockpit, tmp_path):
    from vfio_advisor.install import COCKPIT_DIR, install_cockpit_page, uninstall

    notes = install_cockpit_page(tmp_path / "root")
    placed = tmp_path / "root" / COCKPIT_DIR
    assert notes and str(placed) in notes[0]
    assert sorted(p.name for p in placed.iterdir()) == sorted(p.name for p in (REPO / "cockpit").iterdir()
                                                              if p.suffix in (".html", ".json", ".css", ".js"))
    with CockpitServer(tmp_path / "ws", demo_config(str(tmp_path / "none.json")), path=[VENV_BIN],
                       page=placed, cockpit=cockpit) as server:
        load(browser, server)
        rows = browser.js("return document.querySelectorAll('#domains tr[data-domain]').length")
        problems = console_problems(browser)
    assert rows > 0 and problems == []
    assert any(str(placed) in n for n in uninstall(str(tmp_path / "root")))
    assert not placed.exists()


def test_which_cockpit_this_tier_ran_against(browser, cockpit, tmp_path):
    """Each leg is served by the Cockpit it is named after: cockpit-ws says
    its version to the page (cockpit.info, from its "init" message), and a
    process the page spawns has that leg's bridge as its parent: bookworm's
    C program, or 337's Python one out of the unpacked prefix."""
    with CockpitServer(tmp_path, demo_config(str(tmp_path / "none.json")), path=[VENV_BIN],
                       cockpit=cockpit) as server:
        load(browser, server)
        ws_version = browser.js("return String(cockpit.info.version)")
        parent = browser.js("return new Promise(done => cockpit.spawn(['sh', '-c', "
                            "'tr \"\\\\0\" \" \" < /proc/$PPID/cmdline'])"
                            ".then(done, e => done('spawn failed: ' + e.message)))")
        problems = console_problems(browser)
    print(f"cockpit leg {cockpit.name}: cockpit-ws {ws_version}, bridge: {parent}")
    upstream = cockpit.name.split("-")[0].split(":")[-1]
    assert ws_version == upstream
    if int(upstream.split(".")[0]) >= 300:
        assert parent.startswith("/usr/bin/python3 -c ") and str(backports.SITE) in parent, parent
    else:
        assert parent.split() == [cockpitws.COCKPIT_BRIDGE], parent
    assert problems == []


def test_the_shell_lists_the_page_and_runs_it_in_its_frame(browser, cockpit, tmp_path):
    with CockpitServer(tmp_path, demo_config(str(tmp_path / "none.json")), path=[VENV_BIN],
                       cockpit=cockpit) as server:
        browser.go("about:blank")
        browser.console()
        browser.go(f"{server.url}/vfio-advisor#/vm/win11")
        frame = "document.querySelector('iframe[name=\"cockpit1:localhost/vfio-advisor\"]')"
        browser.wait(f"const f = {frame}; return f && f.contentDocument && f.contentDocument.body &&"
                     " f.contentDocument.body.getAttribute('data-ready') === 'true'", timeout=90,
                     what="the page in the shell's frame")
        entry = browser.js("return [...document.querySelectorAll('nav a')].map(a => a.textContent.trim())"
                           ".filter(t => t === 'VFIO interrupts')")
        view = browser.js(f"return {frame}.contentDocument.querySelector('[data-vm-link], #vm-summary h2').textContent")
        shot(browser, cockpit, "shell-vm-view")
        # the shell's own pages log what this sandbox lacks (no systemd D-Bus): only this page's count
        problems = [m for m in console_problems(browser) if "vfio-advisor" in m]
    assert entry == ["VFIO interrupts"]
    assert view.startswith("win11")
    assert problems == []
