"""The local stack's EventBridge schedules: moto creates a function's ``Schedule`` rule but never fires it, so
:class:`Scheduler` does what EventBridge does: every ``rate(...)`` period after the rule exists, the rule's
constant ``Input`` is delivered to its target, here the rule's mirror queue (docs/local-mode.md), which the
dispatcher hands to the function as the event. The first delivery is one period after the stack started
(EventBridge: a rate schedule starts when the rule is created). Only ``rate(N unit)`` schedules with an
``Input`` exist in template.yaml; anything else is refused at start, naming the rule.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trashsorter.errors import ConfigurationError

LOG = logging.getLogger("trashsorter.local.schedules")
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Schedule:
    rule: str  # the rule's logical id (function + event name, as SAM names it)
    period_s: float
    payload: str  # the rule's constant Input: the event the function receives
    queue_logical_id: str  # the rule's mirror queue


def from_template(template: Mapping[str, Any]) -> list[Schedule]:
    """Every ``Schedule`` event of the template's functions."""
    found = []
    for function_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for event_name, event in (resource.get("Properties", {}).get("Events") or {}).items():
            if event.get("Type") != "Schedule":
                continue
            rule = f"{function_id}{event_name}"
            props = event.get("Properties", {})
            match = _RATE.match(str(props.get("Schedule", "")))
            if not match or not isinstance(props.get("Input"), str):
                raise ConfigurationError(
                    f"{rule}: the local stack runs only rate(N unit) schedules with an Input"
                )
            period = int(match.group(1)) * _UNIT_S[match.group(2).rstrip("s")]
            found.append(Schedule(rule, float(period), props["Input"], f"{rule}LocalMirror"))
    return found


class Scheduler:
    """Deliver each schedule's input every period (a daemon thread; :meth:`stop` ends it)."""

    def __init__(
        self,
        schedules: list[Schedule],
        send: Callable[[Schedule], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 1.0,
    ) -> None:
        self.schedules = schedules
        self.send = send
        self.clock = clock
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.due = {s.rule: clock() + s.period_s for s in schedules}

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._run, name="local-schedules", daemon=True)
        self._thread.start()
        return self

    def fire_due(self) -> list[str]:
        """Deliver every schedule whose time has come; the rules delivered."""
        fired = []
        for schedule in self.schedules:
            if self.clock() < self.due[schedule.rule]:
                continue
            self.due[schedule.rule] += schedule.period_s
            try:
                self.send(schedule)
                fired.append(schedule.rule)
            except Exception:  # EventBridge retries a failed delivery; the next period comes anyway
                LOG.warning("could not deliver the schedule %s", schedule.rule, exc_info=True)
        return fired

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.fire_due()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
