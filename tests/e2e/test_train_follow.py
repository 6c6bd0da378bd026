"""``trashsorter train`` while a run trains: it follows that run (``--wait``) instead of asking for a second
one; ``--new`` asks for another, which the training rule then decides (queued behind the active run)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cli import run_cli as _cli
from trashsorter import run_end, runs
from trashsorter.schema import RunStatus
from trashsorter.settings import TrainingSettings
from trashsorter.training_request import TrainingLaunch
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.targets import local_target

pytestmark = pytest.mark.e2e

RUN = "run-follow0000000001-1"
JOB = "deeplens-ts-follow-20260101000000"


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory({"MinImagesPerLabel": "500"}, device=False)


def _active_run(runtime: LocalRuntime) -> tuple[Any, TrainingSettings]:
    """A run holding the training lock, written by the same functions start-training uses."""
    assert runtime.state is not None
    target = local_target(runtime.state, check=False)
    ddb = target.client("dynamodb")
    settings = TrainingSettings.from_env(runtime.stack.function_env("StartTrainingFunction"))
    assert runs.acquire_lock(ddb, target.table, RUN, "follow0000000001")
    launch = TrainingLaunch(
        run_id=RUN, job_name=JOB, dataset_id="follow0000000001", bucket=settings.images_bucket,
        table_name=target.table, request={},
    )  # fmt: skip
    runs.create_run(ddb, settings, launch, backend="sagemaker", attempt=1, accepted_seq=0)
    runs.mark_started(ddb, target.table, RUN)
    return ddb, settings


def test_train_follows_the_active_run_and_new_asks_for_another(
    local_stack: LocalRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(local_stack.state_path)
    ddb, settings = _active_run(local_stack)
    code, out, err = _cli(capsys, "train", "--local-state", state, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["following"] == "active" and answer["run"]["run_id"] == RUN
    assert not runs.get_lock(settings.table_name, ddb=ddb).get("pending"), "no second run was asked for"

    def finish_later() -> None:
        time.sleep(2)
        run_end.finish_run(
            settings, run_id=RUN, status=RunStatus.FAILED, message="stopped by the test", ddb=ddb
        )

    threading.Thread(target=finish_later, daemon=True).start()
    code, out, err = _cli(capsys, "train", "--wait", "--timeout", "60", "--local-state", state, "--json")
    assert code == 1 and "training run " + JOB + " failed: stopped by the test" in err
    assert json.loads(out)["run_id"] == RUN  # the run it followed, not a new one
    assert [r["run_id"] for r in runs.list_runs(settings.table_name, ddb=ddb)] == [RUN]

    # --new asks for another run: the rule (500 per label) refuses it and says what is missing
    code, _out, err = _cli(capsys, "train", "--new", "--local-state", state)
    assert code == 1 and "nothing to train" in err


def test_train_does_not_ask_for_a_run_while_one_is_being_started(
    local_stack: LocalRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock is taken before the run record is written: that window is a run starting, not no run."""
    assert local_stack.state is not None
    target = local_target(local_stack.state, check=False)
    ddb = target.client("dynamodb")
    holder = "run-follow0000000002-1"
    assert runs.acquire_lock(ddb, target.table, holder, "follow0000000002")
    try:
        code, out, err = _cli(capsys, "train", "--local-state", str(local_stack.state_path), "--json")
        assert code == 0, err
        assert json.loads(out) == {
            "following": "batch",
            "run": None,
            "reason": f"training run {holder} is starting",
        }
    finally:
        runs.release_lock(ddb, target.table, holder, keep_pending=False)
