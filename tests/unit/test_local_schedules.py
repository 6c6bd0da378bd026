"""The local stack fires the template's Schedule rules as EventBridge does (moto never fires them): the rule's
Input, once per period, the first one period after the start."""

from __future__ import annotations

import json

import pytest

from trashsorter.errors import ConfigurationError
from trashsorter_cli.local import schedules
from trashsorter_cli.local.template import load_template

pytestmark = pytest.mark.unit


def test_every_schedule_of_the_template_with_its_period_input_and_mirror_queue() -> None:
    found = {s.rule: s for s in schedules.from_template(load_template())}
    assert set(found) == {"StartTrainingFunctionReconcileSchedule", "PackageFunctionCoreDeviceResultsCheck"}
    check = found["PackageFunctionCoreDeviceResultsCheck"]
    assert check.period_s == 15 * 60
    assert json.loads(check.payload)["detail-type"] == "Check Core Device Results"
    assert check.queue_logical_id == "PackageFunctionCoreDeviceResultsCheckLocalMirror"
    assert found["StartTrainingFunctionReconcileSchedule"].period_s == 3600


def test_a_schedule_fires_once_per_period_from_one_period_after_the_start() -> None:
    now = [1000.0]
    sent: list[str] = []
    every = schedules.Schedule("R", 60.0, '{"source": "x"}', "RLocalMirror")
    failing = schedules.Schedule("F", 60.0, "{}", "FLocalMirror")

    def send(schedule: schedules.Schedule) -> None:
        if schedule.rule == "F":
            raise ConnectionError("the endpoint is stopping")
        sent.append(schedule.payload)

    scheduler = schedules.Scheduler([every, failing], send, clock=lambda: now[0])
    assert scheduler.fire_due() == [] and sent == []
    now[0] += 59
    assert scheduler.fire_due() == []
    now[0] += 1
    assert scheduler.fire_due() == ["R"] and sent == ['{"source": "x"}']  # F failed; R still went
    assert scheduler.fire_due() == []
    now[0] += 60
    assert scheduler.fire_due() == ["R"] and len(sent) == 2


def test_a_schedule_the_local_stack_cannot_run_is_refused_naming_it() -> None:
    template = {
        "Resources": {
            "Fn": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "Events": {
                        "Nightly": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 3 * * ? *)"}}
                    }
                },
            }
        }
    }
    with pytest.raises(ConfigurationError, match="FnNightly"):
        schedules.from_template(template)
