"""The README's layout table names every module of the service, so it cannot drift from the tree."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def layout_rows() -> list[tuple[list[str], str]]:
    text = (REPO / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if line.startswith("| `"):
            where, what = line.split("|")[1:3]
            rows.append((re.findall(r"`([^`]+)`", where), what))
    return rows


def test_every_module_is_in_the_layout_table() -> None:
    rows = layout_rows()
    missing = []
    for module in sorted((REPO / "app").rglob("*.py")):
        relative = module.relative_to(REPO).as_posix()
        if module.name == "__init__.py" and module.parent.name != "storage":
            continue
        named = any(relative in paths for paths, _ in rows) or any(
            any(relative.startswith(p) and p.endswith("/") for p in paths) and f"`{module.name}`" in what
            for paths, what in rows
        )
        if not named:
            missing.append(relative)
    assert missing == [], f"add these to the README's layout table: {missing}"


def test_every_path_in_the_layout_table_exists() -> None:
    for paths, _ in layout_rows():
        for path in paths:
            assert (REPO / path).exists(), f"the README's layout table names {path}, which is not in the tree"
