"""The suite's own rules: shared test code lives in tests/support, never in another test module."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
IMPORTS_A_TEST_MODULE = re.compile(r"^\s*(from|import)\s+tests\.(\w+\.)*test_\w+", re.M)


def test_no_test_module_imports_another() -> None:
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if IMPORTS_A_TEST_MODULE.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_pattern_catches_both_import_forms() -> None:
    assert IMPORTS_A_TEST_MODULE.search("from tests.unit.test_trainer import TINY\n")
    assert IMPORTS_A_TEST_MODULE.search("import tests.training.test_trainer as t\n")
    assert not IMPORTS_A_TEST_MODULE.search("from tests.support.tiny_model import TINY\n")
