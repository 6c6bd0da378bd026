"""One table decides which AWS errors are retried: throttling, server faults and any HTTP 5xx."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from trashsorter import aws
from trashsorter.deploy import refused
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
    with pytest.raises(TransientError if transient else DeploymentError) as caught:
        aws.call(lambda: _raise(exc), what="create the deployment", refused=refused("could not deploy"))
    expected = (
        "could not create the deployment: An error occurred" if transient else f"could not deploy: {code}: m"
    )
    assert str(caught.value).startswith(expected)


def _raise(exc: Exception) -> None:
    raise exc


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [("ThrottlingException", 400, True), ("SomethingNew", 502, True), ("AccessDeniedException", 403, False)],
)
def test_one_call_wrapper_turns_client_errors_into_domain_errors(
    code: str, status: int, transient: bool
) -> None:
    exc = _error(code, status)
    with pytest.raises(TransientError, match="could not update run r") as caught:
        aws.call(lambda: _raise(exc), what="update run r")  # no refusal given: retried, then dead-lettered
    assert caught.value.__cause__ is exc
    expected = TransientError if transient else DeploymentError
    with pytest.raises(expected) as refused:
        aws.call(lambda: _raise(exc), what="deploy", refused=DeploymentError)
    assert refused.value.__cause__ is exc
    if not transient:
        assert str(refused.value) == f"{code}: m"


def test_expected_codes_are_answers_and_network_faults_are_transient() -> None:
    missing = _error("ResourceNotFound", 400)
    assert (
        aws.call(lambda: _raise(missing), what="describe job j", codes={"ResourceNotFound": lambda _: {}})
        == {}
    )
    assert aws.call(lambda: 7, what="anything") == 7
    condition = _error("ConditionalCheckFailedException", 400)
    assert aws.conditional_write(lambda: _raise(condition), what="take the lock") is False
    assert aws.conditional_write(lambda: None, what="take the lock") is True
    with pytest.raises(TransientError, match="could not publish x: Could not connect"):
        aws.call(lambda: _raise(EndpointConnectionError(endpoint_url="http://x")), what="publish x")


def test_an_http_status_answers_when_the_code_does_not() -> None:
    gone = {404: lambda _: "gone"}
    bucket_gone = _error("NoSuchBucket", 404)
    assert aws.call(lambda: _raise(bucket_gone), what="read s3://b/k", statuses=gone) == "gone"
    named = aws.call(
        lambda: _raise(bucket_gone),
        what="read s3://b/k",
        codes={"NoSuchBucket": lambda _: "named"},
        statuses=gone,
    )
    assert named == "named"  # the code's own answer comes first
    denied = _error("AccessDenied", 403)
    with pytest.raises(TransientError, match=r"could not read s3://b/k: .*AccessDenied"):
        aws.call(lambda: _raise(denied), what="read s3://b/k", statuses=gone)
