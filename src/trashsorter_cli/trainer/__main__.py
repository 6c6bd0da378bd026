"""``python -m trashsorter_cli.trainer --job-name J --manifest s3://... --output s3://... ...``

Runs one local training job (see :mod:`trashsorter_cli.trainer.job`) and prints the event detail it sent.
Exit code 0 when the job completed, 1 when it failed (after the Failed event was sent), 2 when even the
event could not be sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter.errors import TrainingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trashsorter_cli.trainer", description=__doc__)
    parser.add_argument("--job-name", required=True)
    parser.add_argument("--manifest", required=True, help="s3://bucket/datasets/<id>/manifest.jsonl")
    parser.add_argument("--output", required=True, help="s3://bucket/training-output/")
    parser.add_argument("--hyperparameters", default="{}", help="JSON object (SageMaker recipe names)")
    parser.add_argument("--run-id", default="")
    parser.add_argument("--table", default="", help="catalogue table (progress on RUN#<run-id>)")
    parser.add_argument("--event-bus", default="default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s trainer %(levelname)s %(message)s")

    from trashsorter_cli.trainer import job

    try:
        try:
            hyperparameters = json.loads(args.hyperparameters)
        except json.JSONDecodeError as exc:
            hyperparameters = None
            reason = f"--hyperparameters is not JSON: {exc}"
        if not isinstance(hyperparameters, dict):
            detail = job.send_failed(
                job_name=args.job_name,
                output_uri=args.output,
                hyperparameters={},
                reason=reason if hyperparameters is None else "--hyperparameters must be a JSON object",
                event_bus=args.event_bus,
            )
        else:
            detail = job.run_job(
                job_name=args.job_name,
                manifest_uri=args.manifest,
                output_uri=args.output,
                hyperparameters=hyperparameters,
                run_id=args.run_id,
                table=args.table,
                event_bus=args.event_bus,
            )
    except (ClientError, BotoCoreError, TrainingError) as exc:
        logging.getLogger("trashsorter.trainer").error("could not send the training event: %s", exc)
        return 2
    print(json.dumps(detail), flush=True)
    return 0 if detail["TrainingJobStatus"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main())
