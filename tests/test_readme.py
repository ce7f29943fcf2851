"""The README stays a short front page: at most 150 lines, the two commands, a first request, links that
resolve; everything else lives in docs/ (the site `make docs` builds). The site's home page takes its
introduction, set-up and first request from the README's marked sections, so those markers must pair."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 150
LINK = re.compile(r"\]\(([^)\s]+)\)")
SNIPPET = re.compile(r'--8<-- "README\.md:([\w-]+)"')


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_is_at_most_150_lines() -> None:
    lines = len(_readme().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines: move the detail to a docs/ page"


def test_the_readme_gives_the_two_commands_and_a_first_request() -> None:
    readme = _readme()
    assert re.search(r"^make run\b", readme, re.MULTILINE)
    assert re.search(r"^make test\b", readme, re.MULTILINE)
    assert "Authorization: Token $TOKEN" in readme
    assert "http://127.0.0.1:8000/api/v1/runs" in readme


def test_every_relative_link_of_the_readme_resolves() -> None:
    targets = [t for t in LINK.findall(_readme()) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert targets, "the README links to no docs page"
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert missing == [], f"README links to files that do not exist: {missing}"


def test_every_readme_section_the_site_includes_is_marked() -> None:
    readme = _readme()
    wanted = {name for page in (ROOT / "docs").rglob("*.md") for name in SNIPPET.findall(page.read_text())}
    assert wanted, "no docs page includes a README section"
    for name in sorted(wanted):
        start, end = f"--8<-- [start:{name}]", f"--8<-- [end:{name}]"
        assert readme.count(start) == 1 and readme.count(end) == 1, (
            f"README section {name!r} is not marked once"
        )
        assert readme.index(start) < readme.index(end), f"README section {name!r} ends before it starts"
