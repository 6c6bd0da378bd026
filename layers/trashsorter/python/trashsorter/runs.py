"""Training runs and the training lock, stored: the only writer of ``RUN#``, ``JOB#`` and ``LOCK`` items.

Plain storage: reads and conditional writes. What a run's status becomes is decided by
:mod:`trashsorter.lifecycle`; the end of a run (final state -> lock release -> re-publish) is carried out by
:mod:`trashsorter.run_end`.

* ``RUN#<run_id>/RUN`` - one training run: created ``starting`` by :func:`create_run` (with its
  ``JOB#<job>/RUN`` pointer, one transaction), ``in_progress`` (:func:`mark_started`), per-epoch
  ``progress`` (:func:`record_progress`, the trainer), final (:func:`write_final`: one write of the whole
  final state), per-status completion lease and notice receipt (:func:`claim`, :func:`mark_handled`).
* ``LOCK/TRAINING`` - single flight: ``holder`` = the run id; ``pending`` = a trigger that arrived while
  the lock was held (re-published when the run ends and the training rule is still met).

Run ids are ``run-<dataset_id>-<attempt>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from trashsorter import aws, clock
from trashsorter.ddb import deserialize
from trashsorter.ddb import serialize as _ser
from trashsorter.ddb import value as _value
from trashsorter.ddb import values as _vals
from trashsorter.errors import TransientError
from trashsorter.observability import logger
from trashsorter.schema import (
    FINAL_RUN_STATUSES,
    GSI,
    LOCK_KEY,
    RUNS_GSI_PK,
    RunStatus,
    job_key,
    run_key,
)
from trashsorter.settings import CommonSettings, TrainingSettings
from trashsorter.training_request import TrainingLaunch, source_lineage

MAX_ATTEMPTS = 20
CLAIM_LEASE_SECONDS = 900  # > the package function's timeout (300 s)


def make_run_id(dataset_id: str, attempt: int) -> str:
    return f"run-{dataset_id}-{attempt}"


def _deser(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return deserialize(item) if item else None


def _table_name(source: str | CommonSettings) -> str:
    return source if isinstance(source, str) else source.table_name


# ---------------------------------------------------------------- queries


def get_run(table: str | CommonSettings, run_id: str, *, ddb: Any = None) -> dict[str, Any] | None:
    """The run record ``RUN#<run_id>/RUN`` (plain Python values; ``request`` is a JSON string) or None."""
    ddb = ddb or aws.client("dynamodb")
    found = ddb.get_item(TableName=_table_name(table), Key=_ser(run_key(run_id)), ConsistentRead=True)
    return _deser(found.get("Item"))


def find_run_by_job(job_name: str, table: str | CommonSettings, *, ddb: Any = None) -> dict[str, Any] | None:
    """The run that owns training job ``job_name`` via the ``JOB#<job>/RUN`` pointer (strongly consistent)."""
    ddb = ddb or aws.client("dynamodb")
    found = ddb.get_item(TableName=_table_name(table), Key=_ser(job_key(job_name)), ConsistentRead=True)
    pointer = _deser(found.get("Item"))
    if not pointer:
        return None
    return get_run(table, str(pointer["run_id"]), ddb=ddb)


def list_runs(table: str | CommonSettings, *, limit: int = 50, ddb: Any = None) -> list[dict[str, Any]]:
    """Runs newest first (gsi1 ``RUNS`` / created_at)."""
    ddb = ddb or aws.client("dynamodb")
    runs: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": _table_name(table),
        "IndexName": GSI,
        "KeyConditionExpression": "gsi1pk = :pk",
        "ExpressionAttributeValues": _vals(pk=RUNS_GSI_PK),
        "ScanIndexForward": False,
    }
    while len(runs) < limit:
        page = ddb.query(**kwargs, Limit=limit - len(runs))
        runs.extend(item for item in (_deser(raw) for raw in page.get("Items", [])) if item)
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return runs


def runs_for_dataset(
    table: str | CommonSettings, dataset_id: str, *, ddb: Any = None
) -> list[dict[str, Any]]:
    """Every attempt of ``dataset_id`` in attempt order (run ids are ``run-<dataset_id>-<n>``)."""
    runs: list[dict[str, Any]] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        run = get_run(table, make_run_id(dataset_id, attempt), ddb=ddb)
        if run is None:
            break
        runs.append(run)
    return runs


def get_lock(table: str | CommonSettings, *, ddb: Any = None) -> dict[str, Any]:
    ddb = ddb or aws.client("dynamodb")
    found = ddb.get_item(TableName=_table_name(table), Key=_ser(LOCK_KEY), ConsistentRead=True)
    return _deser(found.get("Item")) or {}


# ---------------------------------------------------------------- lock


def acquire_lock(ddb: Any, table: str, run_id: str, dataset_id: str) -> bool:
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression=(
                "SET holder = :run, holder_dataset_id = :ds, acquired_at = :now "
                "REMOVE pending, pending_since, pending_reason, pending_dataset_id"
            ),
            ConditionExpression="attribute_not_exists(holder)",
            ExpressionAttributeValues=_vals(run=run_id, ds=dataset_id, now=clock.now_iso()),
        ),
        what="take the training lock",
    )


def lock_age_seconds(ddb: Any, table: str, lock: Mapping[str, Any]) -> float:
    """Seconds since the lock was taken; a time in the future is treated as now and written back (kept as
    ``acquired_at_in_future``), so a lock "taken" at a future date still grows stale."""
    acquired, holder = str(lock.get("acquired_at", "")), str(lock.get("holder"))
    age = clock.age_seconds(acquired)
    if age >= 0:
        return age
    aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression="SET acquired_at = :now, acquired_at_in_future = :old",
            ConditionExpression="holder = :holder AND acquired_at = :old",
            ExpressionAttributeValues=_vals(now=clock.now_iso(), old=acquired, holder=holder),
        ),
        what="treat a lock time in the future as now",
    )
    logger.warning("training lock time in the future treated as now", extra={"acquired_at": acquired})
    return 0.0


def mark_pending(ddb: Any, table: str, holder: str, *, reason: str, dataset_id: str) -> bool:
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression=(
                "SET pending = :t, pending_since = if_not_exists(pending_since, :now), "
                "pending_reason = :reason, pending_dataset_id = :ds"
            ),
            ConditionExpression="holder = :holder",
            ExpressionAttributeValues=_vals(
                t=True, now=clock.now_iso(), reason=reason, ds=dataset_id, holder=holder
            ),
        ),
        what="record the pending trigger",
    )


def release_lock(
    ddb: Any, table: str, run_id: str, *, keep_pending: bool, reason: str = ""
) -> dict[str, Any]:
    """Release the lock if ``run_id`` holds it; returns the lock item as it was ({} if not held)."""
    now = clock.now_iso()
    if keep_pending:
        update = (
            "SET released_at = :now, last_run_id = :run, pending = :t, "
            "pending_since = if_not_exists(pending_since, :now), pending_reason = :reason "
            "REMOVE holder, holder_dataset_id, acquired_at"
        )
        values = _vals(now=now, run=run_id, t=True, reason=reason or "blocked")
    else:
        update = (
            "SET released_at = :now, last_run_id = :run "
            "REMOVE holder, holder_dataset_id, acquired_at, pending, pending_since, pending_reason, "
            "pending_dataset_id"
        )
        values = _vals(now=now, run=run_id)
    response = aws.call(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression=update,
            ConditionExpression="holder = :run",
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        ),
        what="release the training lock",
        codes={"ConditionalCheckFailedException": lambda _: {}},  # not held by this run
    )
    return _deser(response.get("Attributes")) or {}


def restore_pending(ddb: Any, table: str, old: Mapping[str, Any]) -> None:
    try:
        aws.call(
            lambda: ddb.update_item(
                TableName=table,
                Key=_ser(LOCK_KEY),
                UpdateExpression="SET pending = :t, pending_since = if_not_exists(pending_since, :since)",
                ExpressionAttributeValues=_vals(
                    t=True, since=str(old.get("pending_since") or clock.now_iso())
                ),
            ),
            what="restore the pending trigger",
        )
    except TransientError:
        logger.exception("could not restore the pending trigger")


# ---------------------------------------------------------------- writes


def create_run(ddb: Any, settings: TrainingSettings, launch: TrainingLaunch, *, backend: str, attempt: int,
                accepted_seq: int) -> dict[str, Any]:  # fmt: skip
    now = clock.now_iso()
    record = {
        **run_key(launch.run_id),
        "gsi1pk": RUNS_GSI_PK,
        "gsi1sk": now,
        "run_id": launch.run_id,
        "dataset_id": launch.dataset_id,
        "job_name": launch.job_name,
        "backend": backend,
        "algorithm": settings.training_algorithm,
        **source_lineage(launch.request),
        "attempt": attempt,
        "request": json.dumps(launch.request, sort_keys=True),
        "status": str(RunStatus.STARTING),
        "status_message": "",
        "instance_type": settings.instance_type,
        "region": settings.aws_region,
        "accepted_seq": accepted_seq,
        "created_at": now,
    }
    pointer = {**job_key(launch.job_name), "run_id": launch.run_id, "created_at": now}
    aws.call(
        lambda: ddb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": settings.table_name,
                        "Item": _ser(record),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Put": {
                        "TableName": settings.table_name,
                        "Item": _ser(pointer),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        ),
        what=f"record run {launch.run_id}",
    )
    return record


def mark_started(ddb: Any, table: str, run_id: str) -> None:
    aws.conditional_write(  # False: the local trainer may already report progress
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(run_key(run_id)),
            UpdateExpression="SET #s = :ip, started_at = if_not_exists(started_at, :now)",
            ConditionExpression="#s = :starting",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_vals(
                ip=str(RunStatus.IN_PROGRESS), now=clock.now_iso(), starting=str(RunStatus.STARTING)
            ),
        ),
        what=f"mark run {run_id} started",
    )


def write_final(
    ddb: Any,
    table: str,
    run_id: str,
    *,
    status: RunStatus,
    message: str,
    ended_by: str,
    metrics: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> bool:
    """Write a run's final state in one conditional update (status, message, ``ended_at`` / ``ended_by``,
    ``metrics`` and ``attributes``); False when the run is already final (or not recorded)."""
    values: dict[str, Any] = {
        "status": str(status),
        "msg": message,
        "now": clock.now_iso(),
        "by": ended_by,
        **{f"f{i}": str(final) for i, final in enumerate(FINAL_RUN_STATUSES)},
    }
    names = {"#s": "status"}
    sets = ["#s = :status", "status_message = :msg", "ended_at = :now", "ended_by = :by"]
    extra = {**({"metrics": metrics} if metrics else {}), **dict(attributes or {})}
    for i, (name, value) in enumerate(extra.items()):
        names[f"#x{i}"] = name
        values[f"x{i}"] = value
        sets.append(f"#x{i} = :x{i}")
    final_list = ", ".join(f":f{i}" for i in range(len(FINAL_RUN_STATUSES)))
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(run_key(run_id)),
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression=f"attribute_exists(pk) AND NOT #s IN ({final_list})",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=_vals(**values),
        ),
        what=f"finish run {run_id}",
    )


def record_ignored_event(
    run_id: str,
    event: str,
    reason: str,
    *,
    table_name: str,
    ddb: Any,
    note: str = "event ignored: the run is final",
) -> None:
    """Record an event that changed nothing (it came after the run was final, or SageMaker contradicts it);
    bounded: a set + count."""
    logger.warning(note, extra={"run_id": run_id, "event": event, "why": reason})
    aws.call(
        lambda: ddb.update_item(
            TableName=table_name,
            Key=_ser(run_key(run_id)),
            UpdateExpression="ADD ignored_events :ev, ignored_count :one SET last_ignored = :last",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={
                ":ev": {"SS": [event]},
                ":one": {"N": "1"},
                ":last": _value({"event": event, "reason": reason, "at": clock.now_iso()}),
            },
        ),
        what=f"record the ignored event on run {run_id}",
    )


# ---------------------------------------------------------------- completion lease and outcome


def claim(run_id: str, job_status: str, *, table_name: str, ddb: Any) -> bool:
    """Take the per-status lease on the run; False when another delivery holds it or it is handled."""
    now = clock.now()
    attr = f"package_claim_{job_status.lower()}"
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table_name,
            Key=_ser(run_key(run_id)),
            UpdateExpression="SET #c = :now",
            ConditionExpression=(
                "attribute_exists(pk) AND NOT contains(handled_statuses, :status) "
                "AND (attribute_not_exists(#c) OR #c < :stale)"
            ),
            ExpressionAttributeNames={"#c": attr},
            ExpressionAttributeValues={
                ":now": {"S": clock.iso(now)},
                ":stale": {"S": clock.iso(now - timedelta(seconds=CLAIM_LEASE_SECONDS))},
                ":status": {"S": job_status},
            },
        ),
        what=f"claim run {run_id}",
    )


def update_run(
    run_id: str, attributes: Mapping[str, Any], *, table_name: str, ddb: Any, handled: str = ""
) -> None:
    values = dict(attributes)
    names = {f"#a{i}": name for i, name in enumerate(values)}
    sets = [f"#a{i} = :v{i}" for i in range(len(values))]
    expr_values: dict[str, Any] = {f":v{i}": _value(v) for i, v in enumerate(values.values())}
    expression = ("SET " + ", ".join(sets)) if sets else ""
    if handled:
        expression += " ADD handled_statuses :handled"
        expr_values[":handled"] = {"SS": [handled]}
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "Key": _ser(run_key(run_id)),
        "UpdateExpression": expression.strip(),
        "ConditionExpression": "attribute_exists(pk)",
        "ExpressionAttributeValues": expr_values,
    }
    if names:
        kwargs["ExpressionAttributeNames"] = names
    aws.call(lambda: ddb.update_item(**kwargs), what=f"update run {run_id}")


def mark_handled(run_id: str, job_status: str, *, outcome: str, table_name: str, ddb: Any) -> None:
    """The notice receipt, written after the notice: ``package_outcome`` (what followers wait for) and
    ``job_status`` joins ``handled_statuses`` (a later delivery is a duplicate)."""
    update_run(run_id, {"package_outcome": outcome}, table_name=table_name, ddb=ddb, handled=job_status)


def record_progress(table: str, run_id: str, progress: Mapping[str, Any], *, ddb: Any = None) -> bool:
    """Set ``progress`` (epoch, epochs, losses ...) on an existing run record; False when there is none."""
    item = {**progress, "updated_at": clock.now_iso()}
    return aws.conditional_write(
        lambda: (ddb or aws.client("dynamodb")).update_item(
            TableName=table,
            Key=_ser(run_key(run_id)),
            UpdateExpression="SET #progress = :progress",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#progress": "progress"},
            ExpressionAttributeValues=_vals(progress=item),
        ),
        what=f"record the progress of run {run_id}",
    )
