"""Module-level default AWS clients, created once per process (never in loops).

Domain functions take ``client=None`` and fall back to :func:`client`. boto3 honours ``AWS_ENDPOINT_URL``
(and per-service ``AWS_ENDPOINT_URL_<SERVICE>``), which is how the local stack and ``sam local invoke``
point the same code at the moto server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from trashsorter.errors import TransientError

T = TypeVar("T")

# Connections per client: at least the threads that share one (dataset_store.STORE_WORKERS, tested), so no
# connection is opened and thrown away ("Connection pool is full").
MAX_POOL_CONNECTIONS = 32
_RETRIES = Config(
    retries={"max_attempts": 8, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
    max_pool_connections=MAX_POOL_CONNECTIONS,
)
_lock = threading.Lock()
_clients: dict[str, Any] = {}


def client(service: str) -> Any:
    """The shared client for ``service`` (thread-safe lazy creation)."""
    found = _clients.get(service)
    if found is not None:
        return found
    with _lock:
        if service not in _clients:
            _clients[service] = boto3.session.Session().client(service, config=_RETRIES)
        return _clients[service]


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints/regions between cases)."""
    with _lock:
        _clients.clear()


# The one table of AWS error codes worth retrying (throttling and server faults); any HTTP 5xx counts too.
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServerException",
        "InternalServerErrorException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError ("" when absent)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    """The HTTP status of a ClientError (0 when absent)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(exc: ClientError) -> bool:
    """True when the same call may succeed later: throttling, a server fault, any HTTP 5xx."""
    return error_code(exc) in TRANSIENT_CODES or http_status(exc) >= 500


def call(
    action: Callable[[], T],
    *,
    what: str,
    codes: Mapping[str, Callable[[ClientError], T]] | None = None,
    statuses: Mapping[int, Callable[[ClientError], T]] | None = None,
    refused: Callable[[str], Exception] | None = None,
) -> T:
    """Run one AWS call of the domain (``what``: "<verb> <object>") inside a Tracer subsegment ``## <what>``
    (when tracing is on: in Lambda, unless POWERTOOLS_TRACE_DISABLED).

    A ClientError whose code is in ``codes`` returns what its handler returns (the caller's expected
    answers, e.g. a failed condition); one whose code is not, but whose HTTP status is in ``statuses``
    (e.g. any S3 404: the object or its bucket is gone), returns what that handler returns. Otherwise a
    transient one (:func:`is_transient`) or any BotoCoreError raises :class:`TransientError` ("could not
    <what>: ...", chained) so the event is retried; any other ClientError raises
    ``refused("<code>: <message>")`` when given, else TransientError too.
    """
    with _subsegment(what):
        try:
            return action()
        except ClientError as exc:
            handler = (codes or {}).get(error_code(exc)) or (statuses or {}).get(http_status(exc))
            if handler is not None:
                return handler(exc)
            if refused is not None and not is_transient(exc):
                message = str(exc.response.get("Error", {}).get("Message", ""))
                raise refused(f"{error_code(exc)}: {message}") from exc
            raise TransientError(f"could not {what}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"could not {what}: {exc}") from exc


def _subsegment(what: str) -> Any:
    """A Tracer subsegment when tracing can be on (in Lambda, or POWERTOOLS_TRACE_DISABLED set: the rule of
    :mod:`trashsorter.observability`); elsewhere nothing, and Powertools is not even imported (the CLI and
    the image workers stay small)."""
    if "AWS_LAMBDA_FUNCTION_NAME" not in os.environ and "POWERTOOLS_TRACE_DISABLED" not in os.environ:
        return nullcontext()
    from trashsorter.observability import tracer

    return nullcontext() if tracer.disabled else tracer.provider.in_subsegment(f"## {what}")


def false(_: ClientError) -> bool:
    """A ``codes`` handler: the call's answer is False (e.g. a write whose condition failed)."""
    return False


def conditional_write(write: Callable[[], Any], *, what: str) -> bool:
    """Run one conditional DynamoDB write: True if it was applied, False if its condition failed.

    Any other AWS failure is a :class:`TransientError` ("could not <what>: ...") so the event is retried.
    """

    def applied() -> bool:
        write()
        return True

    return call(applied, what=what, codes={"ConditionalCheckFailedException": false})
