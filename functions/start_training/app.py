"""Start-training handler: "Dataset Ready" (EventBridge) -> at most one training run (single flight).

The scheduled "Reconcile Training" event heals a lock whose holder's final state change was lost.

Outcomes (``started``, ``pending``, ``duplicate``, ``not_ready``, ``blocked``, ``failed``) are returned
and counted; only transient failures (throttling, DynamoDB/S3 errors) raise, so EventBridge retries the
event and finally dead-letters it to StartTrainingDLQ.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from trashsorter.events import parse_dataset_ready, parse_reconcile
from trashsorter.observability import MetricUnit, logger, metrics, tracer
from trashsorter.reconcile import reconcile_training
from trashsorter.settings import TrainingSettings
from trashsorter.training import start_training

SETTINGS = TrainingSettings.from_env()


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    if parse_reconcile(event) is not None:  # the scheduled check
        healed = reconcile_training(SETTINGS)
        metrics.add_metric(name=f"reconcile_{healed.status}", unit=MetricUnit.Count, value=1)
        logger.info("reconcile outcome", extra={"outcome": healed.as_dict()})
        return healed.as_dict()
    ready = parse_dataset_ready(event)
    if ready is None:
        logger.warning("not a Dataset Ready event", extra={"detail_type": event.get("detail-type")})
        return {"status": "ignored"}
    outcome = start_training(ready, SETTINGS)
    metrics.add_metric(name=f"training_{outcome.status}", unit=MetricUnit.Count, value=1)
    logger.info("start training outcome", extra={"outcome": outcome.as_dict()})
    return outcome.as_dict()
