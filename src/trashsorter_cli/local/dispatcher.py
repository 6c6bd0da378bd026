"""Feed the local queues to the functions' own handlers, in-process, the way Lambda would.

One worker thread per event source (the ingest queue, and the mirror queue of every EventBridge rule that
targets a function) long-polls its queue and calls the handler sequentially:

* ``sqs`` sources get the exact Lambda SQS event (``Records`` with ``messageId``, ``receiptHandle``,
  ``body``, ``attributes`` incl. ``ApproximateReceiveCount``, ``messageAttributes``, ``md5OfBody``,
  ``eventSource`` ``aws:sqs``, ``eventSourceARN``, ``awsRegion``), a batch of up to ``BatchSize`` messages.
  With ``ReportBatchItemFailures`` only the messages not named in ``batchItemFailures`` are deleted; an
  exception leaves the whole batch.
* ``rule`` sources (mirror queues): the message body IS the EventBridge event; the handler gets that dict,
  one event per invocation, as EventBridge invokes Lambda.

A message that failed is made visible again after ``retry_delay`` seconds (ChangeMessageVisibility) so the
retry happens within seconds locally; the queue's RedrivePolicy (from template.yaml: ``maxReceiveCount`` of
the queue, or the rule's ``MaximumRetryAttempts + 1``) moves it to the dead-letter queue, exactly as on AWS.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from trashsorter.errors import ConfigurationError
from trashsorter_cli.local.stack import LocalStack
from trashsorter_cli.local.template import LOCAL_ACCOUNT, EventSource, FunctionSpec

LOG = logging.getLogger("trashsorter.local.dispatcher")
Handler = Callable[[Any, Any], Any]
_IMPORT_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------- context


@dataclass
class LambdaContext:
    """The parts of the Lambda context object the handlers (and Powertools) read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_s: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


def make_context(
    function_name: str, *, region: str, memory_mb: int = 1024, timeout_s: float = 60
) -> LambdaContext:
    return LambdaContext(
        function_name=function_name,
        memory_limit_in_mb=memory_mb,
        invoked_function_arn=f"arn:aws:lambda:{region}:{LOCAL_ACCOUNT}:function:{function_name}",
        aws_request_id=str(uuid.uuid4()),
        timeout_s=timeout_s,
        log_group_name=f"/aws/lambda/{function_name}",
    )


# ----------------------------------------------------------------------------------------- import


@contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_module(module_path: Path, env: Mapping[str, str], *, label: str = "fn") -> ModuleType:
    """Import a function's module fresh (a cold start) under its environment."""
    if not module_path.is_file():
        raise ConfigurationError(
            f"handler module {module_path} does not exist (function {label} not built yet)"
        )
    name = f"_trashsorter_local_{label}_{uuid.uuid4().hex[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, module_path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigurationError(f"cannot import {module_path}")
    module = importlib.util.module_from_spec(module_spec)
    with _IMPORT_LOCK, patched_environ(env):
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(name, None)
            raise
    return module


def load_handler(
    module_path: Path, handler_name: str, env: Mapping[str, str], *, label: str = "fn"
) -> Handler:
    """Import a function's module fresh (a cold start) under its environment; return its handler."""
    handler = getattr(load_module(module_path, env, label=label), handler_name, None)
    if not callable(handler):
        raise ConfigurationError(f"{module_path} has no handler function {handler_name!r}")
    return handler


# ----------------------------------------------------------------------------------------- routes


@dataclass
class Route:
    """One event source wired to one handler."""

    function_name: str
    source: EventSource
    queue_url: str
    queue_arn: str
    handler: Handler
    memory_mb: int = 1024
    timeout_s: int = 60

    @property
    def kind(self) -> str:
        return self.source.kind


@dataclass
class RouteStats:
    invocations: int = 0
    errors: int = 0
    messages_ok: int = 0
    messages_failed: int = 0
    last_error: str = ""


def lambda_sqs_record(message: Mapping[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS API message -> a record of the Lambda SQS event (field names as Lambda spells them)."""
    attributes = {str(k): str(v) for k, v in message.get("Attributes", {}).items()}
    message_attributes: dict[str, Any] = {}
    for name, value in message.get("MessageAttributes", {}).items():
        entry: dict[str, Any] = {
            "stringListValues": list(value.get("StringListValues", [])),
            "binaryListValues": list(value.get("BinaryListValues", [])),
            "dataType": value.get("DataType", "String"),
        }
        if "StringValue" in value:
            entry["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["binaryValue"] = value["BinaryValue"]
        message_attributes[name] = entry
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class Dispatcher:
    """Polls every route's queue in its own thread and calls the handler; see the module docstring."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        sqs: Any,
        region: str = "us-east-1",
        retry_delay: int = 2,
        wait_time: int = 1,
    ) -> None:
        if not 0 <= wait_time <= 20:
            raise ConfigurationError("wait_time must be between 0 and 20 seconds (SQS long polling)")
        self.routes = list(routes)
        self.sqs = sqs
        self.region = region
        self.retry_delay = retry_delay
        self.wait_time = wait_time
        self.stats: dict[str, RouteStats] = {self._key(r): RouteStats() for r in self.routes}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy: dict[str, bool] = {self._key(r): False for r in self.routes}

    @staticmethod
    def _key(route: Route) -> str:
        return f"{route.function_name}:{route.source.name}"

    # ---------------------------------------------------------------------------- building

    @classmethod
    def from_stack(
        cls,
        stack: LocalStack,
        *,
        sqs: Any,
        env_overrides: Mapping[str, Mapping[str, str]] | None = None,
        memory: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> Dispatcher:
        """Import every function's handler under its resolved environment and wire its event sources."""
        routes: list[Route] = []
        for logical_id, spec in sorted(stack.functions.items()):
            env = {**stack.function_env(logical_id), **dict((env_overrides or {}).get(logical_id, {}))}
            handler = load_handler(spec.module_path, spec.handler_name, env, label=logical_id)
            routes.extend(
                _routes_for(stack, spec, handler, sqs=sqs, memory_mb=(memory or {}).get(logical_id, 1024))
            )
        return cls(routes, sqs=sqs, region=stack.region, **kwargs)

    # ---------------------------------------------------------------------------- running

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for route in self.routes:
            thread = threading.Thread(
                target=self._run, args=(route,), name=f"dispatch-{self._key(route)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling; a handler that is running finishes first (up to ``timeout``)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _run(self, route: Route) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(route)
            except Exception as exc:  # noqa: BLE001 - the poller must survive an endpoint hiccup
                LOG.warning("polling %s failed: %s", route.queue_url, exc)
                self._stop.wait(1.0)

    def poll_once(self, route: Route, wait_time: int | None = None) -> int:
        """Receive one batch from the route's queue and dispatch it; returns how many messages came."""
        response = self.sqs.receive_message(
            QueueUrl=route.queue_url,
            MaxNumberOfMessages=max(1, min(10, route.source.batch_size)),
            WaitTimeSeconds=self.wait_time if wait_time is None else wait_time,
            VisibilityTimeout=max(route.timeout_s, self.retry_delay),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        if not messages:
            return 0
        key = self._key(route)
        self._busy[key] = True
        try:
            if route.kind == "sqs":
                self._dispatch_sqs(route, messages)
            else:
                for message in messages:
                    self._dispatch_rule(route, message)
        finally:
            self._busy[key] = False
        return len(messages)

    def _invoke(self, route: Route, event: Any) -> tuple[bool, Any]:
        stats = self.stats[self._key(route)]
        stats.invocations += 1
        context = make_context(
            route.function_name, region=self.region, memory_mb=route.memory_mb, timeout_s=route.timeout_s
        )
        try:
            return True, route.handler(event, context)
        except Exception as exc:
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            LOG.warning("%s failed: %s", route.function_name, stats.last_error, exc_info=LOG.isEnabledFor(10))
            return False, None

    def _dispatch_sqs(self, route: Route, messages: list[dict[str, Any]]) -> None:
        records = [lambda_sqs_record(m, queue_arn=route.queue_arn, region=self.region) for m in messages]
        ok, result = self._invoke(route, {"Records": records})
        failed_ids: set[str] = set()
        if not ok:
            failed_ids = {m["MessageId"] for m in messages}
        elif route.source.partial_batch and isinstance(result, Mapping):
            failures = result.get("batchItemFailures") or []
            failed_ids = {str(item.get("itemIdentifier")) for item in failures if isinstance(item, Mapping)}
            known = {m["MessageId"] for m in messages}
            if failed_ids - known:
                # Lambda treats an unknown/empty identifier as a failure of the whole batch.
                failed_ids = known
        for message in messages:
            self._settle(route, message, message["MessageId"] not in failed_ids)

    def _dispatch_rule(self, route: Route, message: dict[str, Any]) -> None:
        try:
            event = json.loads(message["Body"])
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            LOG.warning("%s: mirror message is not an EventBridge event, left for the DLQ", route.queue_url)
            self._settle(route, message, False)
            return
        ok, _ = self._invoke(route, event)
        self._settle(route, message, ok)

    def _settle(self, route: Route, message: Mapping[str, Any], ok: bool) -> None:
        stats = self.stats[self._key(route)]
        if ok:
            stats.messages_ok += 1
            self.sqs.delete_message(QueueUrl=route.queue_url, ReceiptHandle=message["ReceiptHandle"])
            return
        stats.messages_failed += 1
        # Visible again in a few seconds; the RedrivePolicy moves it to the DLQ after maxReceiveCount.
        self.sqs.change_message_visibility(
            QueueUrl=route.queue_url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=self.retry_delay,
        )

    # ---------------------------------------------------------------------------- observing

    def pending(self) -> dict[str, int]:
        """Messages visible or in flight per route (0 everywhere = nothing left to do)."""
        counts: dict[str, int] = {}
        for route in self.routes:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=route.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            counts[self._key(route)] = int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
                attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
            )
        return counts

    def idle(self) -> bool:
        return not any(self._busy.values()) and not any(self.pending().values())

    def wait_idle(self, timeout: float = 60.0, settle: float = 0.5) -> bool:
        """Wait until no route has work (checked twice ``settle`` seconds apart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                time.sleep(settle)
                if self.idle():
                    return True
            time.sleep(0.2)
        return False


def _routes_for(
    stack: LocalStack, spec: FunctionSpec, handler: Handler, *, sqs: Any, memory_mb: int
) -> list[Route]:
    routes: list[Route] = []
    for source in spec.sources:
        queue_url = stack.resources.get(source.queue_logical_id)
        if not queue_url:
            raise ConfigurationError(
                f"local stack has no queue {source.queue_logical_id} for {spec.logical_id}"
            )
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        routes.append(
            Route(
                function_name=spec.logical_id,
                source=source,
                queue_url=queue_url,
                queue_arn=queue_arn,
                handler=handler,
                memory_mb=memory_mb,
                timeout_s=spec.timeout,
            )
        )
    return routes
