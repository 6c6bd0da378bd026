"""Shared fixtures: fake credentials, and the moto stack built from template.yaml (helpers: tests/support).

Every integration test gets its AWS resources from template.yaml through the same code the local mode
uses (:func:`trashsorter_cli.local.stack.deploy_stack`), so tests and the template cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from tests.support.stack import REGION, StackHandle
from trashsorter import aws
from trashsorter_cli.local import moto_patches
from trashsorter_cli.local.stack import deploy_stack


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
