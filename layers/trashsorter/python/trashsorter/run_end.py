"""The end of a run: its final state (one write), the lock released, the follow-up re-published.

The order and the rules are :mod:`trashsorter.lifecycle`'s; the writes are :mod:`trashsorter.runs`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trashsorter import aws, lifecycle, runs
from trashsorter.catalogue import Catalogue
from trashsorter.errors import NotFoundError
from trashsorter.lifecycle import AfterFinish
from trashsorter.observability import logger
from trashsorter.schema import FINAL_RUN_STATUSES, RunStatus
from trashsorter.settings import CommonSettings
from trashsorter.threshold import evaluate_current, publish_dataset_ready, publish_follow_up


def finish_run(
    settings: CommonSettings,
    *,
    run_id: str,
    status: RunStatus,
    message: str = "",
    metrics: dict[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    ddb: Any = None,
    events: Any = None,
    keep_pending: bool = False,
    ended_by: str = "",
) -> bool:
    """End a run (completed / failed / stopped / blocked). Idempotent; final states are final.

    ``ended_by`` names what ends the run (the training job status of a state-change event, ``reconcile``
    ...); it is stored with the final status, ``metrics`` and ``attributes`` (the outcome fields) in the
    same single write. Returns True when this call ended the run, or when the run was already ended by the
    same ``ended_by`` (a retried delivery); False when something else ended it first - the run, the lock
    and the pending trigger are then left untouched.

    Releases the lock if this run holds it and, when the lock carried a pending trigger, clears it and
    re-publishes "Dataset Ready" (reason ``pending``) if the training rule is met again; without one, the
    photos accepted during the run get their one follow-up (:func:`trashsorter.threshold.publish_follow_up`).
    ``keep_pending=True`` (blocked starts) releases the lock but leaves the trigger pending without
    re-publishing (re-publishing would hit the same quota).
    """
    status = RunStatus(status)
    if status not in FINAL_RUN_STATUSES:
        raise ValueError(f"finish_run needs a final status, got {status}")
    ddb = ddb or aws.client("dynamodb")
    table = settings.table_name
    written = runs.write_final(
        ddb, table, run_id, status=status, message=message, ended_by=ended_by, metrics=metrics,
        attributes=attributes,
    )  # fmt: skip
    if not written and not _ended_by(ddb, table, run_id, ended_by, asked=status):
        return False
    old = runs.release_lock(ddb, table, run_id, keep_pending=keep_pending, reason=str(status))
    after = lifecycle.after_release(old, keep_pending=keep_pending)
    if after == AfterFinish.FOLLOW_UP:  # photos that arrived during the run
        publish_follow_up(settings, catalogue=Catalogue(table, ddb=ddb), events=events)
    elif after == AfterFinish.REPUBLISH_PENDING:
        try:
            republish_pending(settings, ddb=ddb, events=events)
        except Exception:
            runs.restore_pending(ddb, table, old)
            raise
    return True


def _ended_by(ddb: Any, table: str, run_id: str, ended_by: str, *, asked: RunStatus) -> bool:
    """The run is already final: whether ``ended_by`` ended it (a retry finishes the rest)."""
    current = runs.get_run(table, run_id, ddb=ddb)
    if current is None:
        raise NotFoundError(f"run {run_id} is not recorded")
    if not lifecycle.may_end(current, ended_by):
        logger.warning(
            "run already final: not rewritten",
            extra={"run_id": run_id, "status": current.get("status"), "asked": str(asked)},
        )
        return False
    logger.info("run already final", extra={"run_id": run_id})
    return True


def republish_pending(settings: CommonSettings, *, ddb: Any, events: Any) -> bool:
    result, state = evaluate_current(settings, Catalogue(settings.table_name, ddb=ddb))
    accepted_seq = int(state["accepted_seq"])
    if not result.met:
        logger.info(
            "pending trigger dropped: the training rule is no longer met", extra={"why": result.reason}
        )
        return False
    publish_dataset_ready(settings, reason="pending", result=result, accepted_seq=accepted_seq, events=events)
    return True
