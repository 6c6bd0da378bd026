"""The run / lock state machine (:mod:`trashsorter.lifecycle`): its decisions, and the table docs show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trashsorter import lifecycle
from trashsorter.lifecycle import AfterFinish, HealAction, LockAction, LockView
from trashsorter.schema import RunStatus

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "DESIGN.md"
DS, OTHER = "d" * 16, "e" * 16


def test_the_design_notes_show_the_module_s_transition_table() -> None:
    assert lifecycle.transitions_markdown() in DESIGN.read_text(encoding="utf-8")


def test_every_final_job_status_maps_to_a_final_run_status() -> None:
    assert lifecycle.job_to_run_status("Completed") == RunStatus.COMPLETED
    assert lifecycle.job_to_run_status("Completed", packaged=False) == RunStatus.FAILED
    assert lifecycle.job_to_run_status("Failed") == RunStatus.FAILED
    assert lifecycle.job_to_run_status("Stopped") == RunStatus.STOPPED
    with pytest.raises(KeyError):
        lifecycle.job_to_run_status("InProgress")


def test_transitions_leave_only_active_runs_and_never_a_final_one() -> None:
    assert lifecycle.allowed(None, RunStatus.STARTING, "start_training")
    assert lifecycle.allowed(RunStatus.IN_PROGRESS, RunStatus.COMPLETED, "completion")
    assert lifecycle.allowed(RunStatus.STARTING, RunStatus.BLOCKED, "start_training")
    assert not lifecycle.allowed(RunStatus.IN_PROGRESS, RunStatus.BLOCKED, "start_training")
    assert not lifecycle.allowed(RunStatus.IN_PROGRESS, RunStatus.COMPLETED, "reconcile")
    for final in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.BLOCKED):
        for target in RunStatus:
            for by in ("start_training", "completion", "reconcile", "local heal"):
                assert not lifecycle.allowed(final, target, by), (final, target, by)


def test_a_final_run_may_be_ended_again_only_by_what_ended_it() -> None:
    assert lifecycle.may_end({"status": "in_progress"}, "Completed")
    assert lifecycle.may_end({"status": "completed", "ended_by": "Completed"}, "Completed")
    assert not lifecycle.may_end({"status": "completed", "ended_by": "Completed"}, "Failed")
    assert not lifecycle.may_end({"status": "failed", "ended_by": "reconcile"}, "Completed")


def test_a_run_is_done_for_the_cli_when_final_and_a_completed_one_is_packaged() -> None:
    assert not lifecycle.is_done({"status": "in_progress"})
    assert not lifecycle.is_done({"status": "completed", "package_outcome": ""})
    assert lifecycle.is_done({"status": "completed", "package_outcome": "deployed"})
    assert lifecycle.is_done({"status": "failed", "package_outcome": ""})
    assert lifecycle.is_done({"status": "blocked"})


def test_what_follows_a_release() -> None:
    assert lifecycle.after_release({}, keep_pending=False) == AfterFinish.NOTHING
    assert lifecycle.after_release({"holder": "r", "pending": True}, keep_pending=True) == AfterFinish.NOTHING
    assert lifecycle.after_release({"holder": "r"}, keep_pending=False) == AfterFinish.FOLLOW_UP
    pending = {"holder": "r", "pending": True}
    assert lifecycle.after_release(pending, keep_pending=False) == AfterFinish.REPUBLISH_PENDING


def _view(run: dict[str, Any] | None, *, holder_ds: str = DS, lock_age: float = 0.0, run_age: float = 0.0,
          holder: str = "run-x-1") -> LockView:  # fmt: skip
    lock = {"holder": holder, "holder_dataset_id": holder_ds} if holder else {}
    return LockView(lock, run, lock_age=lock_age, run_age=run_age)


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (_view(None, holder=""), LockAction.TAKE),
        (_view(None, holder_ds=DS, lock_age=10), LockAction.RETRY),  # the same dataset's snapshot
        (_view(None, holder_ds=OTHER, lock_age=10), LockAction.PENDING),  # another dataset's snapshot
        (_view(None, lock_age=901), LockAction.RELEASE_STALE),  # a start that died
        (_view({"status": "failed", "dataset_id": DS}), LockAction.RELEASE_STALE),
        (_view({"status": "in_progress", "dataset_id": OTHER}), LockAction.PENDING),
        (_view({"status": "starting", "dataset_id": OTHER}), LockAction.PENDING),
        (_view({"status": "in_progress", "dataset_id": DS}), LockAction.DUPLICATE),
        (_view({"status": "starting", "dataset_id": DS}, run_age=10), LockAction.RETRY),
        (_view({"status": "starting", "dataset_id": DS}, run_age=91), LockAction.RESUME),
    ],
)
def test_the_lock_decision_of_start_training(view: LockView, expected: LockAction) -> None:
    assert lifecycle.decide_lock(view, DS, start_timeout=900, resume_after=90) == expected


@pytest.mark.parametrize(
    ("overdue", "job_status", "expected"),
    [
        (-5, "InProgress", HealAction.NONE),
        (5, "InProgress", HealAction.STOP_AND_FAIL),
        (5, "Stopping", HealAction.FAIL),
        (5, "", HealAction.FAIL),
        (5, "Completed", HealAction.REPUBLISH),
        (5, "Failed", HealAction.REPUBLISH),
    ],
)
def test_what_the_reconciler_may_do(overdue: float, job_status: str, expected: HealAction) -> None:
    assert lifecycle.reconcile_action(overdue, job_status) == expected


def test_the_local_heal_fails_only_an_active_run_whose_job_is_lost() -> None:
    assert lifecycle.heal_action({"status": "in_progress"}, job_known=False) == HealAction.FAIL
    assert lifecycle.heal_action({"status": "starting"}, job_known=False) == HealAction.FAIL
    assert lifecycle.heal_action({"status": "in_progress"}, job_known=True) == HealAction.NONE
    assert lifecycle.heal_action({"status": "completed"}, job_known=False) == HealAction.NONE
    assert lifecycle.heal_action(None, job_known=False) == HealAction.NONE
