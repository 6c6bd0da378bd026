"""The embedded local stack for e2e tests: moto server on a free port + dispatcher (+ device), in-process.

Module-scoped: each e2e module gets its own stack (a few seconds to start) and stops it before the next
module runs, because the integration tests' in-process ``mock_aws`` shares moto's backends with the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trashsorter import aws
from trashsorter_cli.local.runtime import LocalRuntime


def start_runtime(tmp: Path, overrides: dict[str, str], *, device: bool) -> LocalRuntime:
    runtime = LocalRuntime(
        port=None,
        stack_name=f"ts-e2e-{tmp.name[-8:].strip('_').lower() or 'x'}",
        overrides=overrides,
        state_path=tmp / "local.json",
        device=device,
        retry_delay=1,
    )
    runtime.start()
    return runtime


@pytest.fixture(autouse=True)
def _local_endpoint(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The root conftest clears AWS_ENDPOINT_URL per test; point it back at this module's stack."""
    for name in ("local_stack",):
        if name in request.fixturenames:
            runtime: LocalRuntime = request.getfixturevalue(name)
            monkeypatch.setenv("AWS_ENDPOINT_URL", runtime.endpoint_url)
            aws.reset_clients()


@pytest.fixture(scope="module")
def local_stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[LocalRuntime] = []

    def _start(overrides: dict[str, str], *, device: bool = True) -> LocalRuntime:
        runtime = start_runtime(tmp_path_factory.mktemp("stack"), overrides, device=device)
        started.append(runtime)
        return runtime

    yield _start
    for runtime in started:
        runtime.stop()
    aws.reset_clients()
