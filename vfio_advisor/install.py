"""`vfio-advisor install` / `uninstall`: place the hook, the config, the
message catalog and the daemon's unit from a clone, and update the catalog
database. (The Debian package places the same files with its own paths:
debian/rules renders them with the functions here.)

The daemon's unit sandboxes it (ProtectHome=yes, ProtectSystem=strict,
DynamicUser=yes), so a unit pointing into a clone under /root or /home, or
into its venv, cannot start: systemd.exec(5) makes /home, /root and
/run/user inaccessible. install therefore copies the program and the modules
it imports from outside the system interpreter's path (a venv's libvirt,
lxml, systemd bindings) to /usr/local/lib/vfio-advisor, and the unit runs the
venv's base interpreter on that copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

from vfio_advisor.catalog import render_catalog
from vfio_advisor.config import render_config_file
from vfio_advisor.errors import UsageError

HOOK_DIR = "etc/libvirt/hooks/qemu.d"
HOOK_NAME = "vfio-advisor"
CATALOG = "usr/lib/systemd/catalog/vfio-advisor.catalog"
CONFIG = "etc/vfio-advisor/config.toml"
UNIT = "etc/systemd/system/vfio-advisor.service"
METRICS_DROPIN = "etc/systemd/system/vfio-advisor.service.d/metrics.conf"
LIB = "usr/local/lib/vfio-advisor"
# The unit's Documentation=man:vfio-advisor(8): man-db searches
# /usr/local/share/man by default (/etc/manpath.config, MANDATORY_MANPATH).
MANPAGE = "usr/local/share/man/man8/vfio-advisor.8"
# cockpit-bridge looks for packages in $XDG_DATA_DIRS/cockpit, by default
# /usr/local/share and /usr/share (cockpit 287, src/bridge/cockpitpackages.c):
# a clone's page goes to the local one, the package's (vfio-advisor-cockpit)
# to /usr/share/cockpit/vfio-advisor.
COCKPIT_DIR = "usr/local/share/cockpit/vfio-advisor"
COCKPIT_FILES = ("index.html", "manifest.json", "vfio-advisor.css", "vfio-advisor.js")
# What the daemon imports beyond the standard library (libvirt-python is four
# top-level modules; lxml and systemd-python one package each).
DEPENDENCIES = ("libvirt", "libvirtmod", "libvirtaio", "lxml", "systemd")
# systemd.exec(5), ProtectHome=yes: "/home/, /root, and /run/user are made
# inaccessible and empty for processes invoked by this unit".
HIDDEN = ("/home", "/root", "/run/user")
# StateDirectory= with DynamicUser=yes lives here (systemd.exec(5)); systemd
# chowns it to the unit's dynamic UID at each start.
PRIVATE_STATE = "/var/lib/private/vfio-advisor"

# The file install writes (and the package ships, debian/render.py), rendered
# from the defaults in config.py so it cannot drift from them.
DEFAULT_CONFIG_TEXT = render_config_file()


def render_hook(python: str, config: str, lib: str | None = None) -> str:
    """The hook (the one template, data/qemu-hook.sh) with these paths. lib:
    the directory holding the vfio_advisor package (default: where this one
    was imported from)."""
    lib = lib or str(Path(__file__).resolve().parent.parent)
    text = resources.files("vfio_advisor").joinpath("data/qemu-hook.sh").read_text()
    for name, value in (("PYTHON", python), ("CONFIG", config), ("LIB", lib)):
        # Replacements as functions: re.sub would read backslashes in a path as escapes.
        text = re.sub(rf"^VFIO_ADVISOR_{name}=.*$", lambda _, v=value, n=name: f"VFIO_ADVISOR_{n}={_sh(v)}",
                      text, count=1, flags=re.M)
    return text


def render_unit(python: str | None = None, pythonpath: str | None = None) -> str:
    """The daemon's unit. Without arguments: the packaged unit
    (/usr/bin/vfio-advisor). With an interpreter: ExecStart runs it with
    `-m vfio_advisor`, and pythonpath (if any) is where it finds the package."""
    text = resources.files("vfio_advisor").joinpath("data/vfio-advisor.service").read_text()
    if python is None:
        return text
    line = f"ExecStart={_unit_quote(python)} -m vfio_advisor daemon"
    if pythonpath:
        line = f"Environment={_unit_quote('PYTHONPATH=' + pythonpath)}\n" + line
    return re.sub(r"^ExecStart=.*$", lambda _: line, text, count=1, flags=re.M)


def render_metrics_dropin(metrics_file: str) -> str:
    """A drop-in that lets the hardened unit write metrics_file."""
    directory = os.path.dirname(os.path.abspath(metrics_file))
    return (
        "# Written by `vfio-advisor install` for metrics_file = " + json.dumps(metrics_file) + ".\n"
        "# ProtectSystem=strict makes every path read-only but StateDirectory=;\n"
        "# the metrics directory is opened up here. DynamicUser= may get another UID\n"
        "# at each start, so the directory is handed to the UID that systemd gave the\n"
        "# state directory (chowned before any ExecStartPre=, systemd.exec(5)).\n"
        "[Service]\n"
        f"ReadWritePaths={_unit_quote(directory)}\n"
        f"ExecStartPre=+/bin/chown --reference={PRIVATE_STATE} {_unit_quote(directory)}\n")


def _unit_quote(text: str) -> str:
    # systemd.service(5) command lines and systemd.unit(5) values: double-quote,
    # escape \\ and ", and double % (specifiers).
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _hidden(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real == h or real.startswith(h + "/") for h in HIDDEN)


def _update_catalog(root: Path) -> str:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return "journalctl not found: catalog placed but not indexed"
    cmd = [journalctl, "--update-catalog"]
    if root.resolve() != Path("/"):
        cmd.insert(1, f"--root={root}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"journalctl --update-catalog failed: {proc.stderr.strip()}"
    return "catalog database updated (journalctl -x will explain entries)"


def base_interpreter() -> str:
    """The interpreter a venv was made from (/usr/bin/python3.11 for Debian's
    venvs): the venv's own bin/python is a symlink inside the venv."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _system_path(python: str) -> list[str]:
    out = subprocess.run([python, "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise InstallError(f"{python} does not run: {out.stderr.strip()[-200:]}")
    return [os.path.realpath(p) for p in json.loads(out.stdout) if p]


class InstallError(UsageError):
    """One line that says why install refused."""


# The files install writes and uninstall removes (relative to the root), but
# the classic hook etc/libvirt/hooks/qemu, which may be another tool's.
MANAGED = (f"{HOOK_DIR}/{HOOK_NAME}", CATALOG, CONFIG, UNIT, METRICS_DROPIN)


def package_owner(base: Path) -> tuple[str, str] | None:
    """(package, path) when a Debian package owns one of the files install
    and uninstall manage, by dpkg's own database (dpkg-query -S) under base;
    None when none does or there is no dpkg database there.

    Why: the package ships the hook and the config as conffiles and the
    catalog as a plain file. uninstall deleting them leaves dpkg's database
    saying they are installed (dpkg --verify reports them missing), and the
    next upgrade does not bring a deleted conffile back (dpkg(1), "--force-
    confmiss"); install would shadow the package's unit with one in /etc.
    """
    dpkg_query = shutil.which("dpkg-query")
    admindir = base / "var/lib/dpkg"
    if dpkg_query is None or not (admindir / "status").is_file():
        return None
    paths = ["/" + rel for rel in MANAGED]
    try:
        proc = subprocess.run([dpkg_query, f"--admindir={admindir}", "-S", *paths],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # dpkg-query(1) -S prints "pkg[, pkg...]: path" per owned path and exits
    # 1 when some path has no owner; "diversion by pkg from|to: path" lines
    # name diverters, not owners.
    for line in proc.stdout.splitlines():
        owners, sep, path = line.partition(": ")
        if sep and not owners.startswith("diversion by ") and path in paths:
            return owners.split(",")[0].strip(), path
    return None


def _refuse_if_packaged(base: Path, command: str, instead: str) -> None:
    owned = package_owner(base)
    if owned is not None:
        package, path = owned
        raise InstallError(f"{command} refused: {base / path.lstrip('/')} belongs to the Debian package "
                           f"{package} (dpkg -S); {instead}")


def copy_program(base: Path, python: str) -> tuple[list[str], str | None]:
    """Copy vfio_advisor and the modules it imports from outside python's own
    path (a venv's) to base/LIB, and byte-compile the copy for python. Returns
    the copied top-level names, and None or why byte-compiling failed."""
    system = _system_path(python)
    target = base / LIB
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copied = []
    for name in ("vfio_advisor", *DEPENDENCIES):
        spec = find_spec(name)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            if name == "vfio_advisor":
                raise InstallError("vfio_advisor is not importable")
            continue  # absent here: the daemon says so at its start (and python3-X provides it)
        origin = os.path.realpath(spec.origin)
        top = os.path.dirname(origin) if spec.submodule_search_locations else origin
        if name != "vfio_advisor" and any(os.path.dirname(top) == p for p in system):
            continue  # the system interpreter sees it where it is
        dest = staging / os.path.basename(top)
        if os.path.isdir(top):
            shutil.copytree(top, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(top, dest)
        copied.append(name)
    compiled = _byte_compile(staging, python)
    # The dynamic user reads it: world-readable whatever root's umask is
    # (the .pyc files and __pycache__ directories compileall made too).
    for dirpath, dirnames, filenames in os.walk(staging):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return copied, compiled


def _byte_compile(tree: Path, python: str) -> str | None:
    """Write the .pyc of every module under tree, with the daemon's own
    interpreter. Returns None, or one line saying what failed.

    Why: the unit's DynamicUser= cannot write here (ProtectSystem=strict, and
    the files are root's), and CPython then compiles every module from source
    in memory at every start: importlib._bootstrap_external (3.11)
    SourceLoader.get_code falls back to source_to_code when no valid pyc is in
    __pycache__ (PEP 3147), and set_data() swallows the OSError of writing one
    ("just forget about writing the data"). Measured: importing libvirt.py
    (~400 KB) from source leaves ~13 MB more RSS (the compiler's heap
    high-water mark) than loading its pyc, and slows every start.

    The daemon's interpreter, not this one: the pyc's magic number and its
    file name (cpython-311) are the loading interpreter's; a pyc another
    version wrote is ignored. After the copy: shutil.copytree copies with
    copy2, which keeps the source's mtime, and the timestamp pyc records the
    mtime and size of the file it sits next to.

    --invalidation-mode timestamp, said explicitly: without it py_compile
    picks checked-hash when SOURCE_DATE_EPOCH is set (a build environment),
    and a checked-hash pyc makes every import read and hash the whole source
    (PEP 552). A timestamp pyc costs only the stat the import does anyway,
    and stays correct if someone edits a copied .py (it is recompiled, in
    memory). The code objects name the staging path; the import system
    rewrites co_filename to the real path on load (_imp._fix_co_filename).
    """
    cmd = [python, "-I", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "timestamp",
           str(tree)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} -m compileall did not run: {exc}"
    if proc.returncode == 0:
        return None
    # compileall -q prints each failure as "*** Error compiling '<path>'..."
    # followed by the compiler's message; name the first one.
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("***")), lines[-1] if lines else "")
    return f"{python} -m compileall exited {proc.returncode}: {first[:200]}"


def _metrics_file(cfg: Path) -> str | None:
    import tomllib

    try:
        with open(cfg, "rb") as f:
            value = tomllib.load(f).get("daemon", {}).get("metrics_file")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def install(root: str = "/", python: str | None = None, config: str | None = None,
            classic: bool = False) -> list[str]:
    base = Path(root)
    _refuse_if_packaged(base, "install", "apt manages these files: upgrade it with apt, or "
                        "apt purge it before installing from a clone")
    config_path = config or "/" + CONFIG
    notes = []
    # The daemon's interpreter must be visible inside the unit's sandbox.
    daemon_python = python or base_interpreter()
    if _hidden(daemon_python):
        raise InstallError(f"the daemon's interpreter {daemon_python} is under "
                           f"{', '.join(HIDDEN)}, which the unit's ProtectHome=yes hides; install "
                           "the Debian package, or run install with a system python (--python /usr/bin/python3)")
    hooks_dir = base / HOOK_DIR
    had_hooks = (base / "etc/libvirt/hooks").is_dir() and any((base / "etc/libvirt/hooks").iterdir())
    target = (base / "etc/libvirt/hooks/qemu") if classic else (hooks_dir / HOOK_NAME)
    if classic and target.exists() and "vfio_advisor.hook" not in target.read_text(errors="replace"):
        raise FileExistsError(f"{target} is someone else's hook; not replacing it. Install "
                              "without --classic (qemu.d/vfio-advisor runs next to it)")
    copied, compile_error = copy_program(base, daemon_python)
    notes.append(f"program: {base / LIB} ({', '.join(copied)}), run by {daemon_python}")
    if compile_error:
        # Not fatal: without a pyc the daemon still runs, it compiles the
        # modules in memory at each start (more RSS, a slower start).
        notes.append(f"warning: not byte-compiled ({compile_error}); the daemon will compile its "
                     "modules in memory at each start")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The hook runs as root outside any sandbox (libvirtd forks it), so it
    # runs this interpreter on this checkout, as before.
    target.write_text(render_hook(python or sys.executable, config_path))
    target.chmod(0o755)
    notes.append(f"hook: {target}")
    cfg = base / config_path.lstrip("/")
    if not cfg.exists():
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(DEFAULT_CONFIG_TEXT)
        notes.append(f"config: {cfg}")
    cat = base / CATALOG
    cat.parent.mkdir(parents=True, exist_ok=True)
    cat.write_text(render_catalog())
    notes.append(f"catalog: {cat}; {_update_catalog(base)}")
    notes.append(_write_manpage(base, daemon_python))
    unit = base / UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(daemon_python, "/" + LIB))
    notes.append(f"daemon unit: {unit} (start it with: systemctl daemon-reload && "
                 "systemctl enable --now vfio-advisor; if it runs already, restart it: it keeps "
                 "the code it started with, and its gathering child refuses to mix the two)")
    notes += write_metrics_dropin(base, _metrics_file(cfg))
    notes += install_cockpit_page(base)
    if not _nss_systemd(base):
        # Measured in the system tier: without nss-systemd, libvirt's client
        # cannot name the unit's dynamic user and every connection fails with
        # "Failed to find user record for uid N".
        notes.append("the unit's DynamicUser= needs nss-systemd to resolve its user (libvirt asks "
                     "for it): apt-get install libnss-systemd")
    if not had_hooks:
        notes.append("libvirtd looks for hooks only when it starts: restart it once "
                     "(systemctl restart libvirtd) so the hook runs at the next VM start.")
    return notes


def _write_manpage(base: Path, python: str) -> str:
    """vfio-advisor(8), which the unit names in Documentation=, rendered by
    the copy just installed (vfio_advisor.manpage reads the CLI's parser,
    which imports this module: a subprocess, not an import)."""
    page = base / MANPAGE
    page.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([python, "-m", "vfio_advisor.manpage", "-o", str(page)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(base / LIB)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"warning: man page not written ({exc})"
    if proc.returncode != 0:
        return f"warning: man page not written: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    page.chmod(0o644)
    return f"man page: {page} (man vfio-advisor)"


def install_cockpit_page(base: Path) -> list[str]:
    """Copy the clone's Cockpit page (cockpit/) where Cockpit finds it; none
    when this program is not a clone (a wheel has no cockpit/)."""
    source = Path(__file__).resolve().parent.parent / "cockpit"
    if not all((source / name).is_file() for name in COCKPIT_FILES):
        return []
    target = base / COCKPIT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in COCKPIT_FILES:
        shutil.copyfile(source / name, target / name)
        (target / name).chmod(0o644)
    note = f"cockpit page: {target} (Cockpit's \"VFIO interrupts\" menu entry)"
    if not (base / "usr/share/cockpit/base1").is_dir():
        note += "; Cockpit is not installed: apt-get install cockpit-ws cockpit-system"
    return [note]


def _nss_systemd(base: Path) -> bool:
    try:
        text = (base / "etc/nsswitch.conf").read_text()
    except OSError:
        return True  # nothing to judge by (a staging root)
    return any(line.split(":", 1)[0].strip() == "passwd" and "systemd" in line.split(":", 1)[1]
               for line in text.splitlines() if ":" in line and not line.lstrip().startswith("#"))


def write_metrics_dropin(base: Path, metrics_file: str | None) -> list[str]:
    dropin = base / METRICS_DROPIN
    if metrics_file is None:
        if dropin.exists():
            dropin.unlink()
            return [f"removed {dropin} (no metrics_file in the config)"]
        return []
    directory = base / os.path.dirname(os.path.abspath(metrics_file)).lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)  # ReadWritePaths= of a missing path fails the start
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(render_metrics_dropin(metrics_file))
    return [f"metrics: {dropin} lets the unit write {metrics_file}"]


def uninstall(root: str = "/") -> list[str]:
    base = Path(root)
    _refuse_if_packaged(base, "uninstall", "remove the package instead: apt remove vfio-advisor "
                        "(apt purge also removes its config and state)")
    notes = []
    catalog_removed = False
    for rel in (f"{HOOK_DIR}/{HOOK_NAME}", CATALOG, UNIT, METRICS_DROPIN, MANPAGE):
        path = base / rel
        if path.exists():
            path.unlink()
            notes.append(f"removed {path}")
            catalog_removed |= rel == CATALOG
    classic = base / "etc/libvirt/hooks/qemu"
    if classic.exists() and "vfio_advisor.hook" in classic.read_text(errors="replace"):
        classic.unlink()
        notes.append(f"removed {classic}")
    if (base / LIB).exists():
        shutil.rmtree(base / LIB)
        notes.append(f"removed {base / LIB}")
    if (base / COCKPIT_DIR).exists():
        shutil.rmtree(base / COCKPIT_DIR)
        notes.append(f"removed {base / COCKPIT_DIR}")
    # The index holds our entries only if our catalog file was there.
    if catalog_removed:
        notes.append(_update_catalog(base))
    if not notes:
        notes.append(f"nothing to remove: no file of vfio-advisor under {base}")
    if (base / CONFIG).exists():
        notes.append(f"kept {base / CONFIG} (remove it by hand if you want)")
    return notes
