"""Shared fixtures: fake credentials, the moto stack built from template.yaml, the tiny trained model
(helpers: tests/support); and the markers, which come from the folder a test lives in.

| folder | marker | what it needs |
|---|---|---|
| unit | unit | nothing but the code |
| integration | integration | moto in-process (real boto3 calls) |
| reliability | reliability | moto, replays, faults, hostile input |
| device | device | the local device program (a tiny model trained once per process) |
| edge | edge | the edge app (the same tiny model) |
| training | training | real trainings on real photos |
| e2e | e2e | the embedded local stack end to end |

``slow`` is added to every test in training/ and e2e/ and to every test that uses the ``tiny_model``
fixture; a module may also mark itself slow. ``make test-fast`` runs ``not slow``. A module that marks
itself with another folder's marker fails (markers cannot drift from folders).

Every integration test gets its AWS resources from template.yaml through the same code the local mode
uses (:func:`trashsorter_cli.local.stack.deploy_stack`), so tests and the template cannot drift apart.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.session
import pytest

from tests.support.stack import REGION, StackHandle
from tests.support.tiny_model import TinyModel, build_tiny_model
from trashsorter import aws
from trashsorter_cli.local import moto_patches
from trashsorter_cli.local.stack import deploy_stack

# Test speed only: one botocore data loader per test process, so that the service models (JSON files of
# up to a few MB) are parsed once rather than once per boto3 session; the tests make a session per stack.
# botocore already shares one loader between all clients of a session; this shares it between sessions.
botocore.session.create_loader = functools.lru_cache(maxsize=None)(botocore.session.create_loader)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may ever reach a real AWS account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Trashsorter")
    aws.reset_clients()


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[StackHandle]:
    """moto (in-process) with the trashsorter stack created from template.yaml.

    Parametrize stack parameters with ``@pytest.mark.parametrize("stack_overrides", [{...}], indirect=False)``
    via a ``stack_overrides`` fixture override in the test module.
    """
    from moto import mock_aws

    moto_patches.install()
    overrides: dict[str, str] = {"IngestSettleSeconds": "0"}  # publish at the crossing unless a test asks
    if "stack_overrides" in request.fixturenames:
        overrides.update(request.getfixturevalue("stack_overrides"))
    with mock_aws():
        aws.reset_clients()
        session = boto3.session.Session(region_name=REGION)
        created = deploy_stack(session, stack_name="ts-test", overrides=overrides, region=REGION)
        yield StackHandle(created, session)
    aws.reset_clients()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Two bins trained for real on TrashNet photos, once per test process (tests/support/tiny_model)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


FOLDER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "reliability": "reliability",
    "device": "device",
    "edge": "edge",
    "training": "training",
    "e2e": "e2e",
}
SLOW_FOLDERS = {"training", "e2e"}
TESTS = Path(__file__).resolve().parent


def _fails_as_misplaced(item: pytest.Item, problem: str) -> None:
    """The test fails with ``problem`` instead of running (a usage error would end pytest-xdist's workers
    without a word)."""

    def misplaced() -> None:
        pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)

    item.runtest = misplaced  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modules = {item.nodeid: _module_of(item) for item in items}
    for item in items:
        folder = modules[item.nodeid].parts[0]
        marker = FOLDER_MARKERS.get(folder)
        if marker is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of {sorted(FOLDER_MARKERS)}")
        foreign = {m.name for m in item.iter_markers()} & (set(FOLDER_MARKERS.values()) - {marker})
        if foreign and not (folder == "integration" and foreign == {"reliability"}):
            _fails_as_misplaced(item, f"in {folder}/ but marked {sorted(foreign)} (the folder sets it)")
        item.add_marker(marker)
        if folder in SLOW_FOLDERS or "tiny_model" in getattr(item, "fixturenames", ()):
            item.add_marker("slow")
    _longest_first(items, modules)


# pytest-xdist (``--dist loadfile``) hands out whole modules in collection order (the Makefile turns off its
# own ordering by test count, which started the single-test e2e modules last): the folders whose modules run
# longest first, within a folder the modules with the most tests, so that no process is still running a
# minutes-long module at the end while the other has nothing left.
LONGEST_FIRST = ("e2e", "reliability", "training", "device", "edge", "integration", "unit")
assert sorted(LONGEST_FIRST) == sorted(FOLDER_MARKERS), "every test folder has its place in the order"


def _module_of(item: pytest.Item) -> Path:
    """The test's module, relative to tests/ (its first part is the folder)."""
    return Path(str(item.fspath)).resolve().relative_to(TESTS)


def _longest_first(items: list[pytest.Item], modules: dict[str, Path]) -> None:
    tests_in = Counter(modules.values())

    def rank(item: pytest.Item) -> tuple[int, int, str]:
        module = modules[item.nodeid]
        return LONGEST_FIRST.index(module.parts[0]), -tests_in[module], str(module)

    items.sort(key=rank)
