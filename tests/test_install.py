"""`vfio-advisor install` from a clone, the hook template, and the package's
version. (The installed result runs under a real systemd in tests/system.)"""

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vfio_advisor import __version__
from vfio_advisor.install import (DEFAULT_CONFIG_TEXT, LIB, base_interpreter, render_hook,
                                  render_metrics_dropin)

from tests import nobody

REPO = Path(__file__).resolve().parents[1]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_debian_version_is_the_program_version():
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    m = re.match(r"vfio-advisor \(([^)]+)\) ", first)
    assert m and m.group(1) == __version__, f"debian/changelog {first!r} vs __version__ {__version__}"


def test_package_hook_is_the_template_as_it_is():
    """One template: its defaults are the package's paths, and rendering it
    with them changes nothing but quoting."""
    template = (REPO / "vfio_advisor/data/qemu-hook.sh").read_text()
    rendered = render_hook("/usr/bin/python3", "/etc/vfio-advisor/config.toml",
                           "/usr/lib/python3/dist-packages")
    assert rendered.replace("'", "") == template.replace("'", "")
    assert "VFIO_ADVISOR_LIB='/usr/lib/python3/dist-packages'" in rendered


@pytest.mark.parametrize("op", [("prepare", "begin"), ("start", "begin")])
def test_hook_does_nothing_once_the_program_is_gone(tmp_path, op):
    """After `apt remove` the conffile stays; it must not run a missing program."""
    marker = tmp_path / "ran"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    hook = tmp_path / "hook"
    hook.write_text(render_hook(str(fake), "/nonexistent.toml", str(tmp_path / "removed")))
    hook.chmod(0o755)
    out = subprocess.run([str(hook), "dom", *op, "-"], input="<domain/>", capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == out.stderr == ""
    assert not marker.exists()
    # and with the program present, it runs it
    (tmp_path / "removed/vfio_advisor").mkdir(parents=True)
    (tmp_path / "removed/vfio_advisor/hook.py").write_text("")
    subprocess.run([str(hook), "dom", *op, "-"], input=b"<domain/>", capture_output=True)
    assert marker.exists() == (op[0] == "prepare")


def test_clone_install_copies_what_the_daemon_imports(tmp_path):
    root = tmp_path / "root"
    (root / "etc/vfio-advisor").mkdir(parents=True)
    (root / "etc/vfio-advisor/config.toml").write_text(
        DEFAULT_CONFIG_TEXT.replace('# metrics_file = ', 'metrics_file = '))
    out = cli("install", "--root", str(root))
    assert out.returncode == 0, out.stderr
    lib = root / LIB
    assert (lib / "vfio_advisor/daemon/service.py").is_file()
    unit = (root / "etc/systemd/system/vfio-advisor.service").read_text()
    python = base_interpreter()
    assert f'ExecStart="{python}" -m vfio_advisor daemon' in unit
    assert f'Environment="PYTHONPATH=/{LIB}"' in unit
    assert str(REPO) not in unit and ".venv" not in unit
    # The copy alone is enough: the base interpreter, outside the clone and
    # its venv, imports everything the daemon needs from it or from the system.
    probe = ("import vfio_advisor.daemon.service, libvirt, libvirtaio, lxml.etree, systemd.daemon, sys;"
             "print(vfio_advisor.__file__); print(libvirt.__file__)")
    run = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd="/",
                         env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(lib))
    for path in run.stdout.splitlines():
        assert str(REPO) not in path, path
    dropin = (root / "etc/systemd/system/vfio-advisor.service.d/metrics.conf").read_text()
    assert 'ReadWritePaths="/var/lib/prometheus/node-exporter"' in dropin
    assert (root / "var/lib/prometheus/node-exporter").is_dir()
    page = root / "usr/local/share/man/man8/vfio-advisor.8"
    assert ".TH VFIO\\-ADVISOR 8 " in page.read_text()  # where man-db finds it: man:vfio-advisor(8)
    out = cli("uninstall", "--root", str(root))
    assert out.returncode == 0 and not lib.exists() and not page.exists()
    assert not (root / "etc/systemd/system/vfio-advisor.service.d/metrics.conf").exists()


@pytest.mark.parametrize("python", ["/root/.venv/bin/python", "/home/me/py/bin/python3"])
def test_refuses_an_interpreter_the_sandbox_hides(tmp_path, python):
    out = cli("install", "--root", str(tmp_path), "--python", python)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and "ProtectHome=yes" in out.stderr, out.stderr
    assert not (tmp_path / "etc/systemd/system/vfio-advisor.service").exists()


def test_metrics_dropin_quotes_the_directory():
    text = render_metrics_dropin("/srv/m 100%/x.prom")
    assert 'ReadWritePaths="/srv/m 100%%"' in text


# --- byte-compiled copy -------------------------------------------------------
# The unit's DynamicUser= cannot write /usr/local/lib/vfio-advisor, so without
# a pyc CPython compiles each module from source in memory at every start
# (importlib._bootstrap_external, 3.11: SourceLoader.get_code falls back to
# source_to_code, and set_data() drops the PermissionError). Under `python -v`
# the import system says which path it took, per module:
#   "# <pyc> matches <py>"  then "# code object from '<pyc>'"   (from the pyc)
#   "# code object from <py>"                                   (compiled from source)
#   "# could not create '<pyc>': PermissionError(...)"          (and could not cache it)
_FROM_PYC = re.compile(r"^# (\S+\.pyc) matches (\S+\.py)$")
_FROM_SOURCE = re.compile(r"^# code object from (/\S+\.py)$")
_NOT_CACHED = re.compile(r"^# could not create '([^']+)'")
# What the daemon imports (as in test_clone_install_copies_what_the_daemon_imports).
_DAEMON_IMPORTS = "vfio_advisor.daemon.service, libvirt, libvirtaio, lxml.etree, systemd.daemon"


def _setpriv_missing() -> str | None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed: cannot import the copy as nobody"
    return None


def _import_as_nobody(python: str, lib: Path) -> tuple[list[str], list[str]]:
    """Import what the daemon imports from the installed copy, as nobody (the
    dynamic user's stand-in: no write access to the root-owned copy), with
    bytecode writing left on as in the unit. Returns the .py files under lib
    that the imported modules came from, and python -v's lines."""
    prefix = nobody.SETPRIV if os.geteuid() == 0 else []
    probe = (f"import json, sys; import {_DAEMON_IMPORTS}; "
             f"print(json.dumps(sorted({{getattr(m, '__file__', None) or '' for m in list(sys.modules.values())}})))")
    out = subprocess.run([*prefix, python, "-v", "-c", probe], capture_output=True, text=True, cwd="/",
                         timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib), "LC_ALL": "C.UTF-8"})
    assert out.returncode == 0, out.stderr[-2000:]
    files = [f for f in json.loads(out.stdout.splitlines()[-1])
             if f.startswith(str(lib) + "/") and f.endswith(".py")]
    return files, out.stderr.splitlines()


def _target(python: str) -> dict:
    out = subprocess.run([python, "-I", "-c", "import importlib.util, json, sys; print(json.dumps("
                          "{'magic': importlib.util.MAGIC_NUMBER.hex(), 'tag': sys.implementation.cache_tag}))"],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in tree.rglob("*")}


def test_clone_install_byte_compiles_the_copy_for_the_daemons_interpreter():
    """Every copied .py has a timestamp pyc for the unit's interpreter, that
    the dynamic user can read; importing the copy as nobody loads every module
    from its pyc and compiles nothing. Then, as a control that the signal is
    live: without libvirt's pyc nobody compiles libvirt.py from source and
    cannot cache it (the daemon's case before install byte-compiled)."""
    reason = _setpriv_missing()
    if reason:
        pytest.skip(reason)
    python = base_interpreter()  # the unit's ExecStart interpreter (default --python)
    target = _target(python)
    with nobody.tree() as top:
        root = top / "root"
        out = cli("install", "--root", str(root))
        assert out.returncode == 0, out.stderr
        assert "not byte-compiled" not in out.stdout, out.stdout
        lib = root / LIB
        assert not lib.with_name(lib.name + ".new").exists()
        sources = sorted(lib.rglob("*.py"))
        assert len(sources) > 50 and lib / "libvirt.py" in sources, sources[:5]
        bad = []
        for py in sources:
            pyc = py.parent / "__pycache__" / f"{py.stem}.{target['tag']}.pyc"
            if not pyc.is_file():
                bad.append(f"{py}: no {pyc.name}")
                continue
            magic, flags, mtime, size = struct.unpack("<4sIII", pyc.read_bytes()[:16])
            st = py.stat()
            # PEP 552 header: flags 0 = timestamp pyc, checked against the
            # source's mtime and size (both mod 2**32) at each import.
            if (magic.hex(), flags, mtime, size) != (target["magic"], 0, int(st.st_mtime) & 0xFFFFFFFF,
                                                     st.st_size & 0xFFFFFFFF):
                bad.append(f"{pyc}: header {magic.hex()} {flags} {mtime} {size}, want {target['magic']} 0 "
                           f"{int(st.st_mtime)} {st.st_size}")
            if stat.S_IMODE(pyc.stat().st_mode) != 0o644 or stat.S_IMODE(pyc.parent.stat().st_mode) != 0o755:
                bad.append(f"{pyc}: mode {oct(pyc.stat().st_mode)}, dir {oct(pyc.parent.stat().st_mode)}")
        assert not bad, "\n".join(bad[:10])

        before = _snapshot(lib)
        files, verbose = _import_as_nobody(python, lib)
        assert _snapshot(lib) == before  # nothing written, nothing touched
        assert str(lib / "libvirt.py") in files and str(lib / "vfio_advisor/daemon/service.py") in files, files
        from_pyc = {m.group(2) for m in map(_FROM_PYC.match, verbose) if m}
        compiled = [m.group(1) for m in map(_FROM_SOURCE.match, verbose) if m]
        assert not [f for f in compiled if f.startswith(str(lib))], compiled
        assert set(files) <= from_pyc, sorted(set(files) - from_pyc)[:10]

        # The control: the same probe sees the in-memory compile of a module
        # whose pyc is missing, and nobody's failed attempt to cache it.
        shutil.rmtree(lib / "__pycache__")
        files, verbose = _import_as_nobody(python, lib)
        compiled = [m.group(1) for m in map(_FROM_SOURCE.match, verbose) if m]
        assert str(lib / "libvirt.py") in compiled, compiled
        assert any(m and m.group(1).startswith(str(lib / "__pycache__")) for m in map(_NOT_CACHED.match, verbose))
        assert not (lib / "__pycache__").exists()

        out = cli("uninstall", "--root", str(root))
        assert out.returncode == 0, out.stderr
        assert not lib.exists()


def test_clone_install_goes_on_when_byte_compiling_fails(tmp_path):
    """A pyc only saves memory and start time: install says in one line that
    it could not compile, and places everything else."""
    real = base_interpreter()
    fake = tmp_path / "python3"
    # The daemon's interpreter as seen by install, except that its compileall fails.
    fake.write_text('#!/bin/sh\nfor a; do [ "$a" = compileall ] && { echo "*** Error compiling '
                    f"'x.py'...\"; exit 1; }}; done\nexec {real} \"$@\"\n")
    fake.chmod(0o755)
    root = tmp_path / "root"
    out = cli("install", "--root", str(root), "--python", str(fake))
    assert out.returncode == 0, out.stderr
    warning = [line for line in out.stdout.splitlines() if "not byte-compiled" in line]
    assert len(warning) == 1 and "exited 1: *** Error compiling 'x.py'" in warning[0], out.stdout
    assert (root / LIB / "vfio_advisor/daemon/service.py").is_file()
    assert not list((root / LIB).rglob("*.pyc"))
    assert (root / "etc/systemd/system/vfio-advisor.service").is_file()


# --- the Debian package owns the files: install and uninstall refuse --------
# A real dpkg database in a private root: dpkg installs a package named
# vfio-advisor that ships what the real one ships at the paths install and
# uninstall manage (the hook and the config as conffiles, the catalog), with
# the texts debian/render.py writes. No maintainer scripts, so dpkg --root
# needs no chroot (--force-script-chrootless only says so).

def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dpkg", f"--root={root}", "--force-not-root", "--force-script-chrootless", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def packaged_root(tmp_path):
    if shutil.which("dpkg") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg and dpkg-deb are needed (a Debian host)")
    from vfio_advisor.catalog import render_catalog
    from vfio_advisor.install import CATALOG, CONFIG, HOOK_DIR, HOOK_NAME

    pkg = tmp_path / "pkg"
    files = {f"{HOOK_DIR}/{HOOK_NAME}": render_hook("/usr/bin/python3", "/" + CONFIG,
                                                      "/usr/lib/python3/dist-packages"),
             CONFIG: DEFAULT_CONFIG_TEXT, CATALOG: render_catalog()}
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (pkg / HOOK_DIR / HOOK_NAME).chmod(0o755)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(f"Package: vfio-advisor\nVersion: {__version__}\nArchitecture: all\n"
                                        "Maintainer: tests <tests@example.org>\nDescription: test copy\n")
    (pkg / "DEBIAN/conffiles").write_text(f"/{HOOK_DIR}/{HOOK_NAME}\n/{CONFIG}\n")
    deb = tmp_path / "vfio-advisor.deb"
    built = subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stderr
    root = tmp_path / "root"
    for d in ("info", "updates"):
        (root / "var/lib/dpkg" / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    done = _dpkg(root, "-i", str(deb))
    assert done.returncode == 0, done.stderr
    return root, files


@pytest.mark.parametrize("state", ["installed", "config-files"])
@pytest.mark.parametrize("command", ["uninstall", "install"])
def test_install_and_uninstall_refuse_what_the_package_owns(packaged_root, command, state):
    """Before: uninstall on a package install deleted the package's conffile
    hook and its catalog (dpkg --verify then reports them missing, and an
    upgrade does not bring a deleted conffile back)."""
    root, files = packaged_root
    if state == "config-files":  # apt remove: dpkg keeps the conffiles, and owns them, until purge
        assert _dpkg(root, "-r", "vfio-advisor").returncode == 0
    before = {rel: (root / rel).read_text() for rel in files if (root / rel).exists()}
    out = cli(command, "--root", str(root))
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.splitlines()) == 1 and out.stdout == "", out.stderr
    assert f"{command} refused: {root}/etc/libvirt/hooks/qemu.d/vfio-advisor belongs to the Debian package " \
           "vfio-advisor (dpkg -S)" in out.stderr, out.stderr
    assert ("apt remove vfio-advisor" if command == "uninstall" else "apt purge") in out.stderr
    assert {rel: (root / rel).read_text() for rel in files if (root / rel).exists()} == before
    verify = _dpkg(root, "--verify", "vfio-advisor")
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    assert not (root / LIB).exists() and not (root / "etc/systemd/system/vfio-advisor.service").exists()


def test_uninstall_goes_on_once_the_package_is_purged(packaged_root):
    """The refusal is about dpkg's ownership, not about a dpkg database being
    there: after purge, a clone's files at the same paths are uninstall's."""
    root, files = packaged_root
    assert _dpkg(root, "--purge", "vfio-advisor").returncode == 0
    hook = root / "etc/libvirt/hooks/qemu.d/vfio-advisor"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(files["etc/libvirt/hooks/qemu.d/vfio-advisor"])
    out = cli("uninstall", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert not hook.exists() and f"removed {hook}" in out.stdout


def test_unit_documentation_is_the_shipped_man_page():
    """`systemctl status` and `systemctl help vfio-advisor` open the unit's
    first Documentation= (systemd.unit(5): "man:" URIs are opened with
    man(1)); it must be the page the package ships, in its section."""
    from vfio_advisor.install import render_unit
    from vfio_advisor.manpage import render as render_manpage

    docs = [line.split("=", 1)[1] for line in render_unit().splitlines() if line.startswith("Documentation=")]
    m = re.search(r"^\.TH (\S+) (\d)\b", render_manpage(), re.M)
    assert m, "the man page has no .TH line"
    assert docs and docs[0] == f"man:{m.group(1).replace(chr(92) + '-', '-').lower()}({m.group(2)})", docs
    shipped = (REPO / "debian/vfio-advisor.manpages").read_text().split()
    assert any(p.endswith(f"/vfio-advisor.{m.group(2)}") for p in shipped), shipped


def test_uninstall_of_nothing_says_so(tmp_path):
    """An empty root: no catalog was removed, so no index was updated, and
    no config is there to be kept."""
    out = cli("uninstall", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"nothing to remove: no file of vfio-advisor under {tmp_path}\n"
    (tmp_path / "etc/vfio-advisor").mkdir(parents=True)
    (tmp_path / "etc/vfio-advisor/config.toml").write_text("")
    out = cli("uninstall", "--root", str(tmp_path))
    assert out.stdout.splitlines()[-1] == (f"kept {tmp_path}/etc/vfio-advisor/config.toml "
                                           "(remove it by hand if you want)")
