"""The README is the first thing a user reads: a quick start at the top, the
deep material in docs/, and for every test tier what it needs and takes (CI
has 90 minutes on 2 cores)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_quick_start_within_the_first_60_lines():
    head = "\n".join(README.splitlines()[:60])
    assert "\n## Quick start\n" in head
    # what to run, where the program is after it, what the output means
    assert "make demo" in head and ".venv/bin/vfio-advisor" in head
    for meaning in ("A domain line:", "A device line:", "A finding:", "Exit status:"):
        assert meaning in head, meaning


def test_deep_material_lives_in_docs():
    """Byte-compiled copies, resident memory and per-sample microseconds are
    for contributors: docs/internals.md and docs/benchmarks.md."""
    for word in ("pyc", "RSS", "µs", "cpu_us", "MiB", "per_cpu_count", "gather_worker"):
        assert word not in README, f"{word!r} belongs in docs/, not the README"
    for doc in ("internals.md", "benchmarks.md", "testing.md"):
        assert f"(docs/{doc})" in README, doc


def _tiers() -> list[list[str]]:
    section = README.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    assert rows[0] == ["tier", "where", "needs", "time"], rows[0]
    return rows[2:]


def test_every_test_directory_has_a_tier_with_its_needs_and_time():
    rows = _tiers()
    where = " ".join(row[1] for row in rows)
    for directory in sorted(p.parent.name for p in REPO.glob("tests/*/test_*.py")):
        assert f"tests/{directory}" in where, f"tests/{directory} is in no tier of the README"
    for tier, _, needs, time in rows:
        assert needs, f"{tier}: what it needs"
        assert re.search(r"~?\d+(-\d+)? (s|min)\b", time), f"{tier}: how long it takes ({time!r})"


def test_links_to_docs_resolve():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
