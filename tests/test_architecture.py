"""The layering the README describes, checked on the import graph:
facts -> rules -> findings -> sinks, with thin shells on top.

- no import cycle among vfio_advisor modules (lazy imports inside functions
  count too: a cycle hidden in a function is still a cycle);
- facts/ imports only facts/ and errors;
- rules/ imports no engine, shell or sink;
- findings and the sinks never reach for the rule registry.
"""

from __future__ import annotations

import ast
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
