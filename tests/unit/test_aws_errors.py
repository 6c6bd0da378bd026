"""One table decides which AWS errors are retried: throttling, server faults and any HTTP 5xx."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from trashsorter import aws
from trashsorter.deploy import aws_failure
from trashsorter.errors import DeploymentError, TransientError


def _error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("ThrottlingException", 400, True),
        ("TooManyRequestsException", 429, True),
        ("InternalFailure", 500, True),
        ("ServiceUnavailableException", 503, True),
        ("SomethingNew", 502, True),  # any 5xx
        ("ValidationException", 400, False),
        ("AccessDeniedException", 403, False),
        ("ResourceNotFoundException", 404, False),
    ],
)
def test_transient_errors_and_what_deployment_makes_of_them(code: str, status: int, transient: bool) -> None:
    exc = _error(code, status)
    assert aws.is_transient(exc) is transient
    assert isinstance(aws_failure("CreateDeployment", exc), TransientError if transient else DeploymentError)
