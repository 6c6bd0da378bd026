"""The README's parameter table is documentation of template.yaml: it must not drift from it."""

from __future__ import annotations

import re
from pathlib import Path

from trashsorter_cli.local.template import load_template

REPO_ROOT = Path(__file__).resolve().parents[2]


def _readme_parameters() -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Stack parameters", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", section, flags=re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


def test_readme_lists_every_stack_parameter_with_its_default() -> None:
    declared = load_template()["Parameters"]
    documented = _readme_parameters()
    assert set(documented) == set(declared)
    for name, spec in declared.items():
        default = str(spec.get("Default", ""))
        shown = documented[name]
        assert shown == default or (default == "" and shown == "*(empty)*"), (name, shown, default)


def test_readme_quick_start_is_the_two_make_commands() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", quick, flags=re.MULTILINE)
    assert commands == ["make demo", "make test"]
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, flags=re.MULTILINE) and re.search(
        r"^test:", makefile, flags=re.MULTILINE
    )
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "set -euo pipefail" in ci
