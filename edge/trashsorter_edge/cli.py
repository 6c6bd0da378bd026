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

from trashsorter_edge.app import LOCAL_SORT_TOPIC, EdgeApp, Settings, Topics
from trashsorter_edge.inbox import Inbox
from trashsorter_edge.liveview import LiveView
from trashsorter_edge.model import ModelError, resolve_model
from trashsorter_edge.outputs import PublishError, make_publisher
from trashsorter_edge.scene import DEFAULT_THRESHOLD as SCENE_CHANGE
from trashsorter_edge.sources import SourceError, open_source


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trashsorter-edge", description=__doc__)
    p.add_argument(
        "--model", required=True, help="model folder (model.onnx + labels.txt), model.onnx.tar.gz or bundle"
    )
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
    p.add_argument("--debounce", type=int, default=5, help="sure frames an item lasts before its command")
    p.add_argument("--sort-ms", type=float, default=500.0, help="or milliseconds (two frames at least)")
    p.add_argument("--sort-gap", type=int, default=2, help="unsure frames in a row that end an item")
    p.add_argument(
        "--scene-change",
        type=float,
        default=SCENE_CHANGE,
        help="grey levels (16x16 thumbnail, mean) of frame difference that start a new item (0: off)",
    )
    p.add_argument("--local-topic", default=LOCAL_SORT_TOPIC, help="Greengrass local pub/sub sort topic")
    p.add_argument("--model-id", default="", help="model id in results (default: model.json or dir name)")
    p.add_argument("--infer-topic", default="trashsorter/<thing>/infer", help="<thing> = the thing name")
    p.add_argument("--status-topic", default="trashsorter/<thing>/status")
    p.add_argument("--actuator-topic", default="trashsorter/<thing>/object", help="{object: label} topic")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks into a folder source")
    p.add_argument("--live-port", type=int, default=0, help="serve the live view on this port (0: off)")
    p.add_argument("--live-host", default="127.0.0.1", help="live view address (no auth: keep it local)")
    p.add_argument("--inbox-bucket", default="", help="upload unsure/flagged frames here (empty: off)")
    p.add_argument("--inbox-dir", default=".trashsorter-edge/inbox", help="local queue of frames to upload")
    p.add_argument("--inbox-max-queue", type=int, default=50, help="frames kept while offline (oldest go)")
    p.add_argument("--inbox-per-minute", type=int, default=6, help="uploads per minute at most")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings(
        thing=args.thing,
        threshold=args.threshold,
        top_k=args.top_k,
        publish_rate=args.publish_rate,
        debounce=args.debounce,
        sort_ms=args.sort_ms,
        sort_gap=args.sort_gap,
        scene_change=args.scene_change,
    )
    topics = Topics.for_thing(
        args.thing, args.infer_topic, args.status_topic, args.actuator_topic, args.local_topic
    )
    try:
        publisher = make_publisher(args.output or ["jsonl"], endpoint_url=args.endpoint_url)
    except PublishError as exc:
        print(f"trashsorter-edge: {exc}", file=sys.stderr)
        return 2
    inbox = (
        Inbox(
            args.inbox_dir,
            args.inbox_bucket,
            args.thing,
            max_queue=args.inbox_max_queue,
            per_minute=args.inbox_per_minute,
        )
        if args.inbox_bucket
        else None
    )
    live = (
        LiveView(args.live_host, args.live_port, args.thing, on_flag=inbox.flag if inbox else None)
        if args.live_port
        else None
    )
    hooks = [hook for hook in (inbox.hook if inbox else None, live.hook if live else None) if hook]
    try:
        model_dir, model_id = resolve_model(args.model)
        app = EdgeApp(model_dir, publisher, settings, topics, hooks=hooks, model_id=args.model_id or model_id)
        source = open_source(args.source, once=args.once, poll_s=args.poll)
    except (ModelError, SourceError) as exc:
        print(f"trashsorter-edge: {exc}", file=sys.stderr)
        publisher.close()
        return 1

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if live is not None:
        try:
            live.start()
            print(f"trashsorter-edge: live view on {live.url}", file=sys.stderr, flush=True)
        except OSError as exc:  # a busy port: say so and classify without the page
            error = f"the live view cannot listen on {args.live_host}:{args.live_port}: {exc.strerror or exc}"
            print(f"trashsorter-edge: {error}; classifying without it", file=sys.stderr, flush=True)
            app.status({"status": "error", "error": error})
            app.hooks.remove(live.hook)
            live = None
    if inbox is not None:
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: inbox.flag())  # `kill -USR1`: flag this frame
        inbox.start()
    try:
        counts = app.run(source)
        app.status({"status": "stopped", **counts, **(inbox.counts if inbox else {})})
    finally:
        if live is not None:
            live.stop()
        if inbox is not None:
            inbox.stop()
        publisher.close()
    return 0 if counts["frames"] or not counts["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
