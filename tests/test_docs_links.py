"""Design-note citations resolve: every `docs/….md` a comment, docstring or document names exists, every
`§N.N` it cites is a numbered heading there (bare "spec §N.N" / "contract §N.N": `docs/contract.md`), no
comment still names a note that is not in the repository, and the README lists every design note."""

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
    assert {
        "mailbox_app/store/__init__.py",
        "runs_app/store/__init__.py",
        "README.md",
        "docs/contract.md",
    } <= where
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


@pytest.mark.parametrize(
    "doc", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")), ids=str
)
def test_the_readme_lists_every_design_note(doc: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Design notes", 1)
    assert len(section) == 2, "README.md has no '## Design notes' section"
    assert f"`{doc}`" in section[1].split("\n## ", 1)[0]
