"""Package handler: "SageMaker Training Job State Change" (EventBridge) -> gate, package, register, deploy;
"Greengrass V2 Effective Deployment Status Change" -> the core device's result on the deployment record;
"Check Core Device Results" (its schedule) -> the core devices that did not report once the deployment's
timeout has passed.

Outcomes (``deployed``, ``registered``, ``rejected``, ``failed``, ``stopped``, ``duplicate``, ``ignored``,
``refused`` - an event DescribeTrainingJob contradicts) are returned and counted; a gated-out model or a
corrupt artifact is an outcome, not an error. Only
transient failures (throttling, 5xx, a concurrent delivery of the same event) raise, so EventBridge retries
the event and finally dead-letters it to PackageDLQ.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from trashsorter.completion import handle_training_state_change
from trashsorter.deploy.device_results import (
    check_unreported,
    is_check,
    parse_status_change,
    record_device_result,
)
from trashsorter.deploy.orchestrate import PackageOutcome
from trashsorter.events import parse_training_state_change
from trashsorter.observability import MetricUnit, logger, metrics, tracer
from trashsorter.settings import PackageSettings

SETTINGS = PackageSettings.from_env()


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    device_change = parse_status_change(event)
    if device_change is not None:  # a core device's result of a Greengrass v2 deployment
        result = record_device_result(device_change, SETTINGS)
        metrics.add_metric(name=f"device_result_{result.outcome}", unit=MetricUnit.Count, value=1)
        logger.info("core device result", extra=result.as_dict())
        return result.as_dict()
    if is_check(event):  # the schedule: core devices that never reported on the current deployment
        checked = check_unreported(SETTINGS)
        metrics.add_metric(name=f"device_check_{checked.outcome}", unit=MetricUnit.Count, value=1)
        logger.info("core devices checked", extra=checked.as_dict())
        return checked.as_dict()
    change = parse_training_state_change(event)
    if change is None:
        logger.warning("not a training job state change", extra={"source": event.get("source")})
        outcome = PackageOutcome("", "", "ignored", reason="not a SageMaker training job state change")
    else:
        outcome = handle_training_state_change(change, SETTINGS)
    metrics.add_metric(name=f"package_{outcome.outcome}", unit=MetricUnit.Count, value=1)
    logger.info("package outcome", extra=outcome.as_dict())
    return outcome.as_dict()
