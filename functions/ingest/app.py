"""Ingest handler: SQS batch of S3 notifications -> validate, hash and catalogue each image; a message of
the settle queue (the once-per-batch timer, trashsorter.threshold) -> "Dataset Ready" once ingest is quiet.

Partial-batch responses (``ReportBatchItemFailures``): a message whose processing raised is reported in
``batchItemFailures`` and retried by SQS (then dead-lettered); the other messages of the batch are done.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import single_metric
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from trashsorter.catalogue import Catalogue
from trashsorter.events import parse_s3_notification
from trashsorter.ingest import IGNORED, process_s3_events
from trashsorter.observability import MetricUnit, logger, metrics, tracer
from trashsorter.settings import IngestSettings
from trashsorter.threshold import on_settle_timer, parse_settle_timer

SETTINGS = IngestSettings.from_env()
processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> None:
    logger.set_correlation_id(record.message_id)
    timer = parse_settle_timer(record.body)
    if timer is not None:
        outcome = on_settle_timer(timer, SETTINGS, catalogue=Catalogue(SETTINGS.table_name))
        metrics.add_metric(name=f"settle_{outcome}", unit=MetricUnit.Count, value=1)
        return
    for outcome in process_s3_events(parse_s3_notification(record.body), SETTINGS):
        if outcome.status == IGNORED:
            metrics.add_metric(name="ignored", unit=MetricUnit.Count, value=1)
        elif outcome.changed and outcome.reason_code and outcome.status == "rejected":
            with single_metric(
                name="rejected", unit=MetricUnit.Count, value=1, namespace=metrics.namespace
            ) as metric:
                metric.add_dimension(name="reason", value=outcome.reason_code)
        elif outcome.changed:
            metrics.add_metric(name=outcome.status, unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(correlation_id_path="Records[0].messageId")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(
        process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    )
