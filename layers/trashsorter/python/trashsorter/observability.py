"""The one Logger / Tracer / Metrics module.

Handlers stack the decorators in this fixed order (outermost first)::

    @logger.inject_lambda_context(correlation_id_path=...)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics(capture_cold_start_metric=True)
    def handler(event, context): ...

``capture_response=False`` everywhere: no image bytes or catalogue records end up in traces.
Service name, log level and namespace come from the environment (POWERTOOLS_*), set in template.yaml.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

# Tracing is off outside Lambda unless asked for (local mode, tests): no X-Ray daemon there.
if "AWS_LAMBDA_FUNCTION_NAME" not in os.environ and "POWERTOOLS_TRACE_DISABLED" not in os.environ:
    os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "trashsorter"))
tracer = Tracer(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "trashsorter"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Trashsorter"))

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
