"""The README's Layout table matches the tree and the import contracts; the architecture page (`ARCHITECTURE`)
names every module; every source path the README, the docs pages and the code's comments cite exists.

The Layout table has one row per folder. For the two apps, the package folders (`mailbox_app/store/`,
`runs_app/api/`, ...) must each have a row, and those rows must be exactly the packages the layer
contracts of `.importlinter` name: a package added, removed or renamed without both fails here."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("mailbox_app", "runs_app")
# folders of an app that are Django conventions or data, not layer packages
NOT_PACKAGES = frozenset({"migrations", "management", "templates", "static", "__pycache__"})
LAYER_CONTRACTS = {"mailbox_app": "mailbox-layers", "runs_app": "runs-layers"}
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ROW_PATH = re.compile(r"`([\w./-]+/)`")
CITED_PATH = re.compile(
    r"(?<![\w/.])((?:mailbox_app|runs_app|awaken_project|tests|bench|scripts|clients)/[\w/.-]*\w\.(?:py|sh|js|md))\b"
)


def _layout_lines() -> list[tuple[str, str]]:
    """(folder named by a row's first cell, the rest of the row) for every row of the Layout table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = readme.split("\n## Layout\n", 1)
    assert len(parts) == 2, "README.md has no '## Layout' section"
    section = parts[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        head = ROW_PATH.fullmatch(cells[0]) if len(cells) >= 2 else None
        if head:
            rows.append((head.group(1), " ".join(cells[1:])))
    return rows


def _layout_rows() -> dict[str, str]:
    return dict(_layout_lines())


def _package_folders(app: str) -> set[str]:
    """`app/name/` for every folder of the app that holds Python code, less the Django conventions."""
    return {
        f"{app}/{folder.name}/"
        for folder in (ROOT / app).iterdir()
        if folder.is_dir() and folder.name not in NOT_PACKAGES and any(folder.glob("*.py"))
    }


def _contract_layers(app: str) -> list[str]:
    """The names in the `layers =` list of the app's layer contract (`a : b` and `a | b` are siblings)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter", encoding="utf-8")
    section = f"importlinter:contract:{LAYER_CONTRACTS[app]}"
    assert config.has_section(section), f".importlinter has no [{section}]"
    return [
        name
        for line in config[section]["layers"].splitlines()
        for name in re.split(r"[\s:|()]+", line)
        if name
    ]


def _contract_packages(app: str) -> set[str]:
    """The layers that are folders; the others must be modules (`apps`, `tasks`, `conf`, `models`...)."""
    packages = set()
    for name in _contract_layers(app):
        if (ROOT / app / name).is_dir():
            if name not in NOT_PACKAGES:
                packages.add(f"{app}/{name}/")
        else:
            assert (ROOT / app / f"{name}.py").is_file(), (
                f"{LAYER_CONTRACTS[app]} names {app}.{name}: no such module"
            )
    return packages


def _app_package_rows(app: str) -> set[str]:
    """Rows naming a folder one level inside the app (`mailbox_app/store/`; not `mailbox_app/` itself)."""
    return {
        folder for folder, _ in _layout_lines() if folder.startswith(f"{app}/") and folder.count("/") == 2
    }


def _modules() -> list[Path]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py" or {"migrations", "management"} & set(rel.parts):
                continue
            found.append(rel)
    return found


def test_the_layout_table_has_one_row_per_folder() -> None:
    folders = [folder for folder, _ in _layout_lines()]
    assert sorted({f for f in folders if folders.count(f) > 1}) == [], "folders with more than one row"


@pytest.mark.parametrize("app", APPS)
def test_every_package_folder_of_the_apps_has_a_row(app: str) -> None:
    missing = sorted(_package_folders(app) - _layout_rows().keys())
    assert missing == [], f"package folders without a row in the README's Layout table: {missing}"


def test_no_row_names_a_folder_that_does_not_exist() -> None:
    ghosts = [folder for folder, _ in _layout_lines() if not (ROOT / folder).is_dir()]
    assert ghosts == [], f"the README's Layout table names folders that do not exist: {ghosts}"


@pytest.mark.parametrize("app", APPS)
def test_the_package_rows_are_the_packages_of_the_layer_contract(app: str) -> None:
    """The README's rows and `.importlinter`'s layers name the same packages (lint-imports, with
    `exhaustive = true`, holds the contract to the tree)."""
    assert _app_package_rows(app) == _contract_packages(app)


def test_architecture_names_every_module_of_the_apps() -> None:
    """Each module by its path, or by its file name on a line that names its folder (a table row)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")  # (docs/architecture.md must exist)
    lines = text.splitlines()

    def named(rel: Path) -> bool:
        if rel.as_posix() in text:
            return True
        folder = rel.parent.as_posix() + "/"
        return any(folder in line and f"`{rel.name}`" in line for line in lines)

    missing = [rel.as_posix() for rel in _modules() if not named(rel)]
    assert missing == [], f"modules docs/architecture.md does not name: {missing}"


def test_every_source_path_cited_in_docs_and_comments_exists() -> None:
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in (*APPS, "awaken_project", "bench", "tests", "scripts", "clients"):
        sources += [
            p
            for p in sorted((ROOT / folder).rglob("*.py"))
            if "migrations" not in p.parts and "node_modules" not in p.parts
        ]
    dangling = sorted(
        f"{source.relative_to(ROOT)}: {cited}"
        for source in sources
        for cited in set(CITED_PATH.findall(source.read_text(encoding="utf-8")))
        if not (ROOT / cited).exists()
    )
    assert dangling == []


def test_the_layout_test_sees_the_tree_it_checks() -> None:
    """Guards the parsers: they find the folders, rows, layers and modules these tests exist for."""
    assert {"mailbox_app/worker/", "mailbox_app/contract/", "runs_app/api/"} <= _layout_rows().keys()
    assert {"mailbox_app/store/", "mailbox_app/services/"} <= _package_folders("mailbox_app")
    assert "runs_app/api/" in _package_folders("runs_app")
    assert {"contract", "store", "apps", "tasks"} <= set(_contract_layers("mailbox_app"))
    assert "mailbox_app/contract/" in _contract_packages("mailbox_app")
    assert "runs_app/api/" in _contract_packages("runs_app")
    modules = {rel.as_posix() for rel in _modules()}
    assert {"mailbox_app/worker/execution.py", "mailbox_app/contract/mailbox.py"} <= modules
    assert "runs_app/services/control.py" in modules
    assert CITED_PATH.findall("see tests/support/agents.py and `mailbox_app/store/claims.py`.") == [
        "tests/support/agents.py",
        "mailbox_app/store/claims.py",
    ]
