"""The documentation a clone carries stands on its own: every relative link resolves, and
nothing cites a file from outside the repository (the team's method specification)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    extra = [ROOT / "docs" / "methods.md"]  # new files count before they are committed
    return sorted({ROOT / p for p in listed} | {p for p in extra if p.exists()})


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_docs_cite_nothing_outside_the_repository() -> None:
    for doc in _docs():
        text = doc.read_text()
        assert "METHODS.md" not in text, f"{doc.relative_to(ROOT)} cites METHODS.md"
        assert "../shared/CONVENTIONS" not in text, f"{doc.relative_to(ROOT)}: ../shared"


def test_relative_links_resolve() -> None:
    checked = 0
    for doc in _docs():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            where = f"{doc.relative_to(ROOT)} -> {target}"
            assert path.exists(), f"{where}: no such file"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{where}: no such heading"
            checked += 1
    assert checked > 10
