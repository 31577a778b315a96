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


def test_the_readme_settings_reference_is_generated_from_the_settings_tree() -> None:
    from app.server_cli import SERVER_FLAGS
    from app.settings_reference import README_END, README_START, reference

    text = (REPO / "README.md").read_text()
    shown = text[text.index(README_START) : text.index(README_END) + len(README_END)] + "\n"
    expected = reference({name: decls[-1] for name, decls in SERVER_FLAGS.items()})
    assert shown == expected, "regenerate it: `artifact-proxy settings --markdown`"


def test_every_variable_the_docs_and_deployment_files_name_is_a_setting() -> None:
    from app.settings import BRANCHES, Settings, env_names

    known = {name for field in Settings.model_fields if field not in BRANCHES for name in env_names(Settings, field)}
    known |= {name for model in BRANCHES.values() for field in model.model_fields for name in env_names(model, field)}
    named: dict[str, set[str]] = {}
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "deploy").rglob("*")]:
        if path.is_file():
            for name in re.findall(r"ARTIFACT_PROXY_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")):
                named.setdefault(name, set()).add(path.relative_to(REPO).as_posix())
    unknown = {name: sorted(paths) for name, paths in named.items() if name not in known}
    assert unknown == {}, "these name no setting of app/settings.py or app/store_settings.py"
