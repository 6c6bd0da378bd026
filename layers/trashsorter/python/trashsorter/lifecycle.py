"""The run and training-lock state machine, as data (pure: no AWS, no clock reads).

Every place that decides what a run's status becomes asks this module: training start
(:mod:`trashsorter.training`), completion (:mod:`trashsorter.completion`), the reconciler
(:mod:`trashsorter.reconcile`), the local heal (``trashsorter_cli.local.heal``) and the CLI's "run is done".
:mod:`trashsorter.runs` stores what they decide (conditional writes), :mod:`trashsorter.run_end` carries out
the end of a run (final state -> release the lock -> re-publish).

:data:`TRANSITIONS` is the table docs/DESIGN.md shows (``tests/unit/test_lifecycle.py`` renders it with
:func:`transitions_markdown` and fails when the docs differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from trashsorter.schema import ACTIVE_RUN_STATUSES, FINAL_RUN_STATUSES, RunStatus

# SageMaker's final job statuses ("Completed": a run completed, or failed when it cannot be packaged)
COMPLETED_JOB = "Completed"
JOB_TO_RUN: dict[str, RunStatus] = {"Failed": RunStatus.FAILED, "Stopped": RunStatus.STOPPED}
FINAL_JOB_STATUSES = (COMPLETED_JOB, *JOB_TO_RUN)
RUNNING_JOB_STATUSES = ("InProgress", "Stopping")
RECONCILE = "reconcile"  # ``ended_by`` of a run the reconciler (or the local heal) failed


@dataclass(frozen=True)
class Transition:
    source: tuple[RunStatus, ...]  # the statuses it may leave ((): none, the run is created)
    target: RunStatus
    by: str  # who writes it
    when: str
    lock: str  # what happens to LOCK/TRAINING


_ACTIVE = tuple(ACTIVE_RUN_STATUSES)
TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        (),
        RunStatus.STARTING,
        "start_training",
        "the lock is taken and the snapshot written",
        "taken (holder = run)",
    ),
    Transition(
        (RunStatus.STARTING,),
        RunStatus.IN_PROGRESS,
        "start_training",
        "CreateTrainingJob accepted (or the job already exists)",
        "held",
    ),
    Transition(
        (RunStatus.STARTING,),
        RunStatus.BLOCKED,
        "start_training",
        "ResourceLimitExceeded",
        "released, trigger kept pending, nothing re-published",
    ),
    Transition(
        (RunStatus.STARTING,),
        RunStatus.FAILED,
        "start_training",
        "SageMaker refused the job",
        "released -> re-publish",
    ),
    Transition(
        _ACTIVE,
        RunStatus.COMPLETED,
        "completion",
        "job Completed, artifact packaged",
        "released -> re-publish",
    ),
    Transition(
        _ACTIVE,
        RunStatus.FAILED,
        "completion",
        "job Failed, or Completed with an artifact that cannot be packaged",
        "released -> re-publish",
    ),
    Transition(_ACTIVE, RunStatus.STOPPED, "completion", "job Stopped", "released -> re-publish"),
    Transition(
        _ACTIVE,
        RunStatus.FAILED,
        "reconcile",
        "overdue and SageMaker reports it running (stopped) or does not know it",
        "released -> re-publish",
    ),
    Transition(
        _ACTIVE,
        RunStatus.FAILED,
        "local heal",
        "the restored stack's emulator lost its job",
        "released -> re-publish",
    ),
)


def allowed(source: RunStatus | str | None, target: RunStatus | str, by: str) -> bool:
    """Whether ``by`` may move a run from ``source`` (None: no run yet) to ``target``."""
    start = RunStatus(source) if source else None
    return any(
        t.target == RunStatus(target) and t.by == by and (start in t.source if start else not t.source)
        for t in TRANSITIONS
    )


def transitions_markdown() -> str:
    """:data:`TRANSITIONS` as the markdown table of docs/DESIGN.md."""
    rows = ["| from | to | by | when | the lock |", "|---|---|---|---|---|"]
    for t in TRANSITIONS:
        source = " / ".join(f"`{s}`" for s in t.source) or "-"
        rows.append(f"| {source} | `{t.target}` | {t.by} | {t.when} | {t.lock} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- run states


def status_of(run: Mapping[str, Any] | None) -> str:
    return str((run or {}).get("status") or "")


def is_final(run: Mapping[str, Any]) -> bool:
    return status_of(run) in {str(s) for s in FINAL_RUN_STATUSES}


def is_active(run: Mapping[str, Any] | None) -> bool:
    return run is not None and status_of(run) in {str(s) for s in ACTIVE_RUN_STATUSES}


def may_end(run: Mapping[str, Any], ended_by: str) -> bool:
    """Whether ``ended_by`` may (still) end the run: it is not final, or ``ended_by`` ended it (a retry)."""
    return not is_final(run) or str(run.get("ended_by") or "") == ended_by


def is_done(run: Mapping[str, Any]) -> bool:
    """The CLI's "run is done": final, and a completed run also packaged (its outcome recorded)."""
    return is_final(run) and (bool(run.get("package_outcome")) or status_of(run) != RunStatus.COMPLETED)


def blocks_new_attempt(run: Mapping[str, Any]) -> bool:
    """A dataset's earlier run that makes another start a ``duplicate`` (completed or still active)."""
    return status_of(run) in {str(RunStatus.COMPLETED), *(str(s) for s in ACTIVE_RUN_STATUSES)}


def job_to_run_status(job_status: str, *, packaged: bool = True) -> RunStatus:
    """The run status a final job status ends the run in (``packaged``: for Completed)."""
    if job_status == COMPLETED_JOB:
        return RunStatus.COMPLETED if packaged else RunStatus.FAILED
    return JOB_TO_RUN[job_status]


# ---------------------------------------------------------------- the end of a run


class AfterFinish(StrEnum):
    NOTHING = "nothing"  # the lock was not held by the run, or the trigger stays pending (blocked)
    FOLLOW_UP = "follow_up"  # photos accepted during the run: one follow-up run when the rule is met
    REPUBLISH_PENDING = "republish_pending"  # a trigger arrived while the lock was held


def after_release(released: Mapping[str, Any], *, keep_pending: bool) -> AfterFinish:
    """What follows the lock release (``released``: the lock item as it was, {} when not held)."""
    if keep_pending or not released:
        return AfterFinish.NOTHING
    return AfterFinish.REPUBLISH_PENDING if released.get("pending") else AfterFinish.FOLLOW_UP


# ---------------------------------------------------------------- the lock decision of start_training


class LockAction(StrEnum):
    TAKE = "take"  # free: the dataset's earlier runs decide, then a conditional write takes it
    RETRY = "retry"  # TransientError: the same dataset is being snapshotted or started
    PENDING = "pending"  # another dataset holds it: mark the trigger pending
    RELEASE_STALE = "release_stale"  # held by a finished run, or by a start that died: release, decide again
    RESUME = "resume"  # the same dataset's run was left starting by a failed invocation
    DUPLICATE = "duplicate"  # the same dataset is training


@dataclass(frozen=True)
class LockView:
    """What the decision reads: the lock, its holder's run, and two ages (seconds)."""

    lock: Mapping[str, Any]
    holder_run: Mapping[str, Any] | None
    lock_age: float  # since the lock was taken
    run_age: float  # since the holder's run was created


def decide_lock(view: LockView, dataset_id: str, *, start_timeout: float, resume_after: float) -> LockAction:
    """The training lock's answer to a start of ``dataset_id`` (see :mod:`trashsorter.training`)."""
    lock, run = view.lock, view.holder_run
    if not lock.get("holder"):
        return LockAction.TAKE
    if run is None and view.lock_age < start_timeout:  # a live invocation is writing its snapshot
        return LockAction.RETRY if lock.get("holder_dataset_id") == dataset_id else LockAction.PENDING
    if run is None or is_final(run):
        return LockAction.RELEASE_STALE
    if run.get("dataset_id") != dataset_id:
        return LockAction.PENDING
    if status_of(run) != RunStatus.STARTING:
        return LockAction.DUPLICATE
    return LockAction.RETRY if view.run_age < resume_after else LockAction.RESUME


# ---------------------------------------------------------------- reconcile and the local heal


class HealAction(StrEnum):
    NONE = "none"  # nothing to heal (no holder, a final holder: start_training releases it, or in time)
    STOP_AND_FAIL = "stop_and_fail"  # InProgress past the limit: StopTrainingJob, then fail the run
    FAIL = "fail"  # fail the run (lock released, pending re-published, notice)
    REPUBLISH = "republish"  # SageMaker has the final status: re-publish the lost state change


def reconcile_action(overdue_s: float, job_status: str) -> HealAction:
    """The reconciler's answer for an active lock holder ``overdue_s`` past its limit + margin."""
    if overdue_s <= 0:
        return HealAction.NONE
    if job_status in FINAL_JOB_STATUSES:
        return HealAction.REPUBLISH
    if job_status == "InProgress":
        return HealAction.STOP_AND_FAIL
    return HealAction.FAIL  # Stopping past the limit, unknown to SageMaker, or anything else


def heal_action(run: Mapping[str, Any] | None, *, job_known: bool) -> HealAction:
    """The local heal after a restore: an active run whose job the emulator no longer knows is failed."""
    if not is_active(run) or job_known:
        return HealAction.NONE
    return HealAction.FAIL
