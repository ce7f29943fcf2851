"""The README's layout table matches the tree, and every source path the docs and comments cite exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("mailbox_app", "runs_app")
CITED_PATH = re.compile(r"(?<![\w/.])((?:mailbox_app|runs_app|awaken_project)/[\w/]*\w\.py)\b")


def _layout_rows() -> dict[str, str]:
    """Folder of a row (the backticked path in its first cell) -> the text of its rows."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        head = re.match(r"`([\w/]+/)`", cells[0]) if len(cells) >= 2 else None
        if head:
            rows[head.group(1)] = rows.get(head.group(1), "") + " " + " ".join(cells[1:])
    return rows


def _modules() -> list[Path]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py" or {"migrations", "management"} & set(rel.parts):
                continue
            found.append(rel)
    return found


def _named(rel: Path, rows: dict[str, str]) -> bool:
    """In its folder's row by file name, or its folder in the nearest ancestor's row (`protocols/`)."""
    folder = rel.parent.as_posix() + "/"
    if folder in rows:
        return f"`{rel.name}`" in rows[folder]
    parent = rel.parent.parent.as_posix() + "/"
    return parent in rows and f"`{rel.parent.name}/`" in rows[parent]


def test_every_module_of_the_apps_is_named_in_its_row_of_the_layout_table() -> None:
    rows = _layout_rows()
    missing = [rel.as_posix() for rel in _modules() if not _named(rel, rows)]
    assert missing == [], f"modules the README's Layout table does not name: {missing}"


def test_the_layout_table_names_no_module_that_does_not_exist() -> None:
    ghosts = [
        f"{folder}{name}"
        for folder, text in _layout_rows().items()
        if folder.split("/")[0] in (*APPS, "awaken_project")
        for name in re.findall(r"`(\w+\.py)`", text)
        if not (ROOT / folder / name).exists()
    ]
    assert ghosts == []


def test_every_source_path_cited_in_docs_and_comments_exists() -> None:
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in (*APPS, "awaken_project", "bench", "tests", "scripts"):
        sources += [p for p in sorted((ROOT / folder).rglob("*.py")) if "migrations" not in p.parts]
    dangling = sorted(
        f"{source.relative_to(ROOT)}: {cited}"
        for source in sources
        for cited in set(CITED_PATH.findall(source.read_text()))
        if not (ROOT / cited).exists()
    )
    assert dangling == []


def test_the_layout_test_sees_the_tree_it_checks() -> None:
    modules = {rel.as_posix() for rel in _modules()}
    assert {"mailbox_app/worker/execution.py", "mailbox_app/contract/mailbox.py"} <= modules
    assert "runs_app/services/control.py" in modules
    assert "mailbox_app/worker/" in _layout_rows()
