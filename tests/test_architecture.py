"""The layering the README describes, checked on the import graph:
facts -> rules -> findings -> sinks, with thin shells on top.

- no import cycle among vfio_advisor modules (lazy imports inside functions
  count too: a cycle hidden in a function is still a cycle);
- facts/ imports only facts/ and errors;
- rules/ imports no engine, shell or sink;
- findings and the sinks never reach for the rule registry;
- no rule ID literal outside rules/ (a rule is named by its object there);
- shells call sinks only through the protocol (sinks/base.py PROTOCOL);
- host files are opened only by HostRoot (facts/host.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vfio_advisor"
SHELLS = {"vfio_advisor.cli", "vfio_advisor.hook", "vfio_advisor.daemon", "vfio_advisor.daemon.service",
          "vfio_advisor.daemon.watch", "vfio_advisor.daemon.state", "vfio_advisor.daemon.gather_child",
          "vfio_advisor.install", "vfio_advisor.sources", "vfio_advisor.snapshot",
          "vfio_advisor.__main__", "vfio_advisor.manpage"}


def module_name(path: Path, root: Path = PKG) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            # "from vfio_advisor import journal_fields": the submodule is the import
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m == "vfio_advisor" or m.startswith("vfio_advisor.")}


def graph(root: Path = PKG) -> dict[str, set[str]]:
    mods = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = {}
    for name, path in mods.items():
        edges[name] = {m for m in imports_of(path, name) if m in mods and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _in(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(edges.items()):
        for dep in sorted(deps):
            if dep == "vfio_advisor":  # the package itself: __version__ only
                continue
            if _in(mod, "vfio_advisor.facts") and not (
                    _in(dep, "vfio_advisor.facts") or dep == "vfio_advisor.errors"):
                bad.append(f"{mod} -> {dep}: facts/ imports only facts/ and errors")
            if _in(mod, "vfio_advisor.rules") and (
                    dep in SHELLS or dep == "vfio_advisor.engine" or _in(dep, "vfio_advisor.sinks")):
                bad.append(f"{mod} -> {dep}: rules/ imports no engine, shell or sink")
            if (mod == "vfio_advisor.findings" or _in(mod, "vfio_advisor.sinks")) and _in(
                    dep, "vfio_advisor.rules"):
                bad.append(f"{mod} -> {dep}: findings and sinks never look up the registry")
    return bad


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_layers_hold():
    assert violations(graph()) == []


def test_the_checks_can_fail(tmp_path):
    """The checker finds a planted cycle and planted forbidden imports."""
    pkg = tmp_path / "vfio_advisor"
    (pkg / "facts").mkdir(parents=True)
    (pkg / "rules").mkdir()
    (pkg / "sinks").mkdir()
    for d in (pkg, pkg / "facts", pkg / "rules", pkg / "sinks"):
        (d / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("from vfio_advisor.rules import checks\n")
    (pkg / "rules/checks.py").write_text("def f():\n    from vfio_advisor.engine import x\n")
    (pkg / "facts/model.py").write_text("from vfio_advisor.findings import Finding\n")
    (pkg / "findings.py").write_text("")
    (pkg / "sinks/text.py").write_text("from ..rules import checks\n")
    edges = graph(pkg)
    assert cycles(edges) == [["vfio_advisor.engine", "vfio_advisor.rules.checks"]]
    bad = violations(edges)
    assert any("facts.model -> vfio_advisor.findings" in b for b in bad)
    assert any("rules.checks -> vfio_advisor.engine" in b for b in bad)
    assert any("sinks.text -> vfio_advisor.rules" in b for b in bad)


# --- rule IDs live in rules/ ----------------------------------------------------

RULE_ID = re.compile(r"\bVA\d{4}\b")
def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def rule_id_literals(root: Path = PKG) -> list[str]:
    """String constants naming a rule ID in a module outside rules/
    (docstrings aside: prose may name rules; only .py files, so the
    generated catalog and man page are not looked at)."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("rules/"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs and RULE_ID.search(node.value)):
                bad.append(f"{rel}:{node.lineno}: {', '.join(RULE_ID.findall(node.value))}")
    return sorted(bad)


def test_rule_ids_are_named_only_in_rules():
    assert rule_id_literals() == []


# --- shells talk to sinks through the protocol -----------------------------------

SHELL_FILES = ("cli.py", "hook.py", "daemon/*.py")


def _protocol() -> set[str]:
    from vfio_advisor.sinks.base import PROTOCOL

    return set(PROTOCOL)


def _is_sink(node: ast.AST) -> bool:
    """`sink`, `self.sink`, `journal_sink`, or a sink built on the spot (`FooSink(...)`)."""
    if isinstance(node, ast.Name):
        return re.search(r"(^|_)sink$", node.id) is not None
    if isinstance(node, ast.Attribute):
        return re.search(r"(^|_)sink$", node.attr) is not None
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name.endswith("Sink")
    return False


def sink_calls_outside_protocol(root: Path = PKG) -> list[str]:
    protocol = _protocol()
    bad = []
    for pattern in SHELL_FILES:
        for path in sorted(root.glob(pattern)):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and _is_sink(node.value) and node.attr not in protocol:
                    bad.append(f"{path.relative_to(root).as_posix()}:{node.lineno}: .{node.attr}")
    return sorted(bad)


def test_shells_use_only_the_sink_protocol():
    assert sink_calls_outside_protocol() == []


# --- host files are opened by HostRoot ---------------------------------------------

# Calls that take a path and open, list or look at a file.
FILE_CALLS = {"open", "io.open", "os.open", "os.listdir", "os.scandir", "os.readlink", "os.stat",
              "os.lstat", "os.walk", "glob.glob", "os.path.exists", "os.path.lexists",
              "os.path.islink", "os.path.isdir", "os.path.isfile", "os.path.getsize",
              "os.path.realpath", "Path", "pathlib.Path"}
# Modules whose files are their own, not the host's facts, each with why.
OWN_FILES = {
    "facts/host.py": "HostRoot itself",
    "config.py": "the config file the user names",
    "daemon/state.py": "the daemon's state file under /var/lib/vfio-advisor",
    "daemon/gather_child.py": "stats the package's own .py files (fingerprint)",
    "sinks/base.py": "writes sink output files atomically, and tells whether one was read since",
    "sinks/journal.py": "looks for journald's socket",
    "sources.py": "domain XML files and snapshot archives the user names",
    "errors.py": "opens /dev/null over fd 2 while libvirt parses (quiet_stderr)",
    "install.py": "installs the package's files under the root it is given",
    "fix/command.py": "the domain XML file it edits",
    "cli.py": "writes --output",
    "manpage.py": "writes --output",
    "guest/changes.py": "the record of guest changes in the state directory (fix --guest --apply)",
    # Archives byte for byte the host files HostRoot recorded (symlinks as
    # links); it reads only HostRoot.recorded paths.
    "snapshot.py": "archives the paths HostRoot recorded",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def host_reads_outside_hostroot(root: Path = PKG, own: dict = OWN_FILES) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in own or rel.startswith("testing/"):  # testing/: recorded captures for the tests
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func) in FILE_CALLS:
                bad.append(f"{rel}:{node.lineno}: {_dotted(node.func)}()")
            elif isinstance(node, ast.Attribute) and node.attr == "_path":
                bad.append(f"{rel}:{node.lineno}: HostRoot._path")
    return sorted(bad)


def test_only_hostroot_opens_host_files():
    assert host_reads_outside_hostroot() == []


def test_the_contract_checks_can_fail(tmp_path):
    """Each contract check finds what is planted for it, and only that."""
    pkg = tmp_path / "vfio_advisor"
    for d in ("rules", "facts", "daemon", "sinks"):
        (pkg / d).mkdir(parents=True)
    (pkg / "rules/runtime.py").write_text('ID = "VA6001"\n')  # allowed: rules/
    (pkg / "daemon/watch.py").write_text(
        '"""Docstrings may say VA6001."""\n'
        'def step(f, sink, host):\n'
        '    if f.rule_id in ("VA6004", "VA6005"):\n'
        '        sink.summary(f)\n'
        '    sink.emit(f, None)\n'
        '    MetricsFileSink("m").write([])\n'
        '    with open(host._path("proc/irq/1/smp_affinity_list")) as fh:\n'
        '        return fh.read()\n')
    (pkg / "facts/sampler.py").write_text("import os\nnames = os.listdir('/sys/kernel/irq')\n")
    assert rule_id_literals(pkg) == ["daemon/watch.py:3: VA6004", "daemon/watch.py:3: VA6005"]
    assert sink_calls_outside_protocol(pkg) == ["daemon/watch.py:4: .summary", "daemon/watch.py:6: .write"]
    assert host_reads_outside_hostroot(pkg, own={}) == [
        "daemon/watch.py:7: HostRoot._path", "daemon/watch.py:7: open()", "facts/sampler.py:2: os.listdir()"]
