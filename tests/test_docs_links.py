"""Design-note citations resolve: every `docs/….md` a comment, docstring or document names exists, every
`§N.N` it cites is a numbered heading there (bare "spec §N.N" / "contract §N.N": `docs/contract.md`), no
comment still names a note that is not in the repository; the site's nav (mkdocs.yml) lists every page
under docs/ and names no page that is missing, and the design-notes page lists every design note.

The strict site build (`make docs`) checks links and anchors between pages; these tests keep the
citations in code comments, which no build renders, and run without the documentation tools."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = "docs/contract.md"
CODE_DIRS = ("mailbox_app", "runs_app", "awaken_project", "bench", "tests", "scripts", "clients")
DOCUMENTS = ("README.md", "docs")

DOC_PATH = re.compile(r"\bdocs/[\w./-]+?\.md\b")
# `§4.12`, `§7`, each end of `§3.4-§3.8`; a path right before it (`docs/pitfalls.md §2`) names the file
SECTION = re.compile(r"(?:(?P<doc>\bdocs/[\w./-]+?\.md)\s+)?§\s?(?P<number>\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(?P<number>\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
# notes that lived outside the repository; a citation must name its docs/ copy instead
STALE = re.compile(
    r"(?<!docs/)\b(?:pitfalls|design-turn\d*|layout-review|contract)\.md\b|\.\./shared/|/work/shared"
)


@dataclass(frozen=True, slots=True)
class Citation:
    where: str
    line: int
    text: str


def _python_prose(path: Path) -> Iterator[tuple[int, str]]:
    """Comments and docstrings of a module, with the line each starts on."""
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                value = body[0].value.value
                if isinstance(value, str):
                    for offset, text in enumerate(value.splitlines()):
                        yield body[0].lineno + offset, text


def _shell_comments(path: Path) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if "#" in text:
            yield number, text[text.index("#") :]


def _code_files() -> Iterator[Path]:
    for top in CODE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if "node_modules" in path.parts or not path.is_file():
                continue
            if path.suffix in {".py", ".sh"}:
                yield path
    yield ROOT / "Makefile"


def _document_files() -> Iterator[Path]:
    for name in DOCUMENTS:
        path = ROOT / name
        yield from sorted(path.rglob("*.md")) if path.is_dir() else [path]


@cache
def citations() -> tuple[Citation, ...]:
    """Every comment/docstring line of the code and every line of the documents."""
    found: list[Citation] = []
    for path in _code_files():
        lines = _python_prose(path) if path.suffix == ".py" else _shell_comments(path)
        found += [Citation(str(path.relative_to(ROOT)), n, text) for n, text in lines]
    for path in _document_files():
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found.append(Citation(str(path.relative_to(ROOT)), number, text))
    return tuple(found)


@cache
def headings(doc: str) -> frozenset[str]:
    return frozenset(m["number"] for m in HEADING.finditer((ROOT / doc).read_text(encoding="utf-8")))


def test_the_scan_sees_the_code_and_the_documents() -> None:
    """Guards the scanner itself: it finds the citations this test exists for."""
    where = {c.where for c in citations() if "§" in c.text}
    assert {"runs_app/store/messages.py", "docs/design/index.md", "docs/contract.md"} <= where
    assert any(w.startswith("mailbox_app/store/") for w in where)
    assert "4.12" in headings(CONTRACT) and "7.11" in headings(CONTRACT) and "1" in headings(CONTRACT)


def test_every_cited_docs_path_exists() -> None:
    """The contract's own `docs/…` paths are files of the reference repository it was read from."""
    missing = [
        f"{c.where}:{c.line}: {m.group()}"
        for c in citations()
        if c.where != CONTRACT
        for m in DOC_PATH.finditer(c.text)
        if not (ROOT / m.group()).is_file()
    ]
    assert not missing, "cited design notes that do not exist:\n" + "\n".join(missing)


def test_every_cited_section_is_a_heading_of_its_document() -> None:
    """A path then `§N` resolves in that file; a bare `§N.N` in `docs/contract.md` (what "spec §" means)."""
    unresolved = []
    for c in citations():
        for m in SECTION.finditer(c.text):
            doc = m["doc"] or CONTRACT
            if (ROOT / doc).is_file() and m["number"] not in headings(doc):
                unresolved.append(f"{c.where}:{c.line}: §{m['number']} is not a section of {doc}")
    assert not unresolved, "\n".join(unresolved)


def test_no_comment_cites_a_note_outside_the_repository() -> None:
    stale = [
        f"{c.where}:{c.line}: {c.text.strip()}"
        for c in citations()
        if not c.where.startswith("docs/") and STALE.search(c.text)
    ]
    assert not stale, "cite the docs/ copy instead:\n" + "\n".join(stale)


def _nav_pages(entries: object) -> Iterator[str]:
    """Every page path of an mkdocs nav: strings, `{title: page}` and `{title: [entries]}`, nested."""
    if isinstance(entries, str):
        yield entries
    elif isinstance(entries, list):
        for entry in entries:
            yield from _nav_pages(entry)
    elif isinstance(entries, dict):
        for value in entries.values():
            yield from _nav_pages(value)


@cache
def nav_pages() -> frozenset[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return frozenset(_nav_pages(config["nav"]))


def _docs_pages() -> list[str]:
    return sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("page", _docs_pages(), ids=str)
def test_the_site_nav_lists_every_docs_page(page: str) -> None:
    """A page the nav leaves out is unreachable on the site. Pages written in other branches are in
    mkdocs.yml's commented block: uncomment a page's line when its file arrives."""
    assert page in nav_pages(), f"docs/{page} is not in mkdocs.yml's nav"


def test_every_nav_page_exists() -> None:
    missing = sorted(page for page in nav_pages() if not (ROOT / "docs" / page).is_file())
    assert missing == [], f"mkdocs.yml's nav names pages that do not exist under docs/: {missing}"


@pytest.mark.parametrize(
    "doc",
    [
        "docs/contract.md",
        "docs/pitfalls.md",
        *sorted(
            str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "design").glob("*.md") if p.name != "index.md"
        ),
    ],
    ids=str,
)
def test_the_design_notes_page_lists_every_design_note(doc: str) -> None:
    index = (ROOT / "docs" / "design" / "index.md").read_text(encoding="utf-8")
    assert f"`{doc}`" in index


def test_the_nav_parser_sees_the_site() -> None:
    assert {"index.md", "contract.md", "design/fenced-attempt.md", "api/reference.md"} <= nav_pages()
    assert "index.md" in _docs_pages()
