"""``trashsorter-edge --model DIR --source S [--output jsonl|ggipc|iot-data] [--once]``: the edge app.

The same program runs standalone (makers without Greengrass) and as the Greengrass v2 component's ``Run``
step. ``--once --output jsonl`` classifies what the source holds now, prints one JSON line per image and
exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from trashsorter_edge.app import EdgeApp, Settings, Topics
from trashsorter_edge.model import ModelError
from trashsorter_edge.outputs import PublishError, make_publisher
from trashsorter_edge.sources import SourceError, open_source


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trashsorter-edge", description=__doc__)
    p.add_argument("--model", required=True, help="model directory: model.onnx + labels.txt")
    p.add_argument(
        "--source", required=True, help="camera index (0), video file, rtsp://..., http://..., folder"
    )
    p.add_argument(
        "--output",
        action="append",
        choices=["jsonl", "ggipc", "iot-data"],
        help="where results go (repeatable; default jsonl)",
    )
    p.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="iot-data endpoint")
    p.add_argument("--once", action="store_true", help="classify what the source holds now, then exit")
    p.add_argument("--thing", default=os.environ.get("AWS_IOT_THING_NAME", "local"))
    p.add_argument("--threshold", type=float, default=0.6, help="below this confidence a result is unsure")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--publish-rate", type=float, default=2.0, help="infer messages/s from a camera/stream")
    p.add_argument("--debounce", type=int, default=5, help="frames a label must hold before {object}")
    p.add_argument("--model-id", default="", help="model id in results (default: model.json or dir name)")
    p.add_argument("--infer-topic", default="trashsorter/<thing>/infer", help="<thing> = the thing name")
    p.add_argument("--status-topic", default="trashsorter/<thing>/status")
    p.add_argument("--actuator-topic", default="trashsorter/<thing>/object", help="{object: label} topic")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks into a folder source")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings(
        thing=args.thing,
        threshold=args.threshold,
        top_k=args.top_k,
        publish_rate=args.publish_rate,
        debounce=args.debounce,
    )
    topics = Topics.for_thing(args.thing, args.infer_topic, args.status_topic, args.actuator_topic)
    try:
        publisher = make_publisher(args.output or ["jsonl"], endpoint_url=args.endpoint_url)
    except PublishError as exc:
        print(f"trashsorter-edge: {exc}", file=sys.stderr)
        return 2
    try:
        app = EdgeApp(args.model, publisher, settings, topics, model_id=args.model_id or None)
        source = open_source(args.source, once=args.once, poll_s=args.poll)
    except (ModelError, SourceError) as exc:
        print(f"trashsorter-edge: {exc}", file=sys.stderr)
        publisher.close()
        return 1

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        counts = app.run(source)
        app.status({"status": "stopped", **counts})
    finally:
        publisher.close()
    return 0 if counts["frames"] or not counts["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
