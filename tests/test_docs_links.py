"""The docs hold together: every relative link in README.md, BENCHMARKS.md, CHANGELOG.md and docs/*.md points to a
file that exists (and, with a ``#fragment`` into a Markdown file, to a heading there, slugged as GitHub slugs it),
every page of docs/ is linked from another page, and README.md stays an entry point of at most 200 lines (the
manual lives in docs/). Reads text only: milliseconds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:")


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("**/*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where a ``[x](y)`` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text(encoding="utf-8")))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor, the ``-1``, ``-2`` suffixes of repeated headings included."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def test_github_slug_matches_githubs_rule():
    assert github_slug("Network speed (`benchmarks/network_speed.py`)") == "network-speed-benchmarksnetwork_speedpy"
    assert github_slug("Short schedules: `_debug` and `_demo`") == "short-schedules-_debug-and-_demo"
    assert github_slug("What every network keeps of nnU-Net") == "what-every-network-keeps-of-nnu-net"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page: Path):
    broken = []
    for target in links(page):
        if target.startswith(EXTERNAL):
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)} links to what does not exist: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_another_page():
    linked = set()
    for page in _pages():
        for target in links(page):
            path_part = target.partition("#")[0]
            if path_part and not target.startswith(EXTERNAL):
                linked.add((page.parent / path_part).resolve())
    orphans = [str(p.relative_to(ROOT)) for p in sorted(DOCS.glob("**/*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages no other page links to (add them to README.md's table): {orphans}"


def test_readme_stays_an_entry_point():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the manual's detail to a page in docs/"
    )
