"""Fixtures the integration modules share (helpers: tests/support)."""

from __future__ import annotations

import pytest

from tests.support.pack import Pack
from tests.support.stack import StackHandle


@pytest.fixture
def pack(stack: StackHandle) -> Pack:
    return Pack(stack)
