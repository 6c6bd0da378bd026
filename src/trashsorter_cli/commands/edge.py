"""``trashsorter edge bundle``, ``trashsorter edge run`` and ``trashsorter watch``: the Greengrass v2
component on this machine.

* ``edge bundle --model ID --out DIR`` writes the components exactly as the package step publishes them:
  ``DIR/recipe.json`` (:func:`trashsorter.deploy.greengrass_v2.component_recipe`) and ``DIR/artifacts/``
  (``trashsorter-edge.zip``), and the model component in ``DIR/dependencies/<name>/``
  (``model.onnx.tar.gz``).
* ``edge run DIR [--source S] [--once]`` runs such a bundle the way a nucleus would
  (:class:`trashsorter_cli.device.runner.ComponentRunner`): the model component first (its ``Startup``
  check), then the app: recipe variables, ``Install`` into the component's own venv, then ``Run``. With
  ``--once`` the app classifies what the source holds and the command prints its JSON lines; otherwise it
  runs until Ctrl-C, publishing to the local stack's IoT data plane when one is running (stdout otherwise).
* ``watch [--topic P] [--count N] [--timeout S] [--replay]`` prints the messages the local endpoint's IoT
  data plane receives from then on (the local device reads moto's record of them), as they arrive;
  ``--replay`` starts from the first one kept.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trashsorter import registry
from trashsorter.deploy import greengrass_v2
from trashsorter.errors import TrashsorterError
from trashsorter.settings import PackageSettings
from trashsorter_cli.commands import inbox
from trashsorter_cli.device.runner import ComponentRunner, RecipeError, dependency_runners
from trashsorter_cli.ui import UI, CliError, UsageError

DEFAULT_WORK = Path(".trashsorter") / "greengrass"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    edge = sub.add_parser("edge", help="the Greengrass v2 edge component: bundle it, run it here")
    edge_sub = edge.add_subparsers(dest="edge_command", required=True, metavar="bundle|run")
    p = edge_sub.add_parser("bundle", parents=[common], help="write recipe.json + artifacts of a model")
    p.add_argument("--model", required=True, dest="model_id")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--version", default="1.0.0", help="component version in the recipe (default 1.0.0)")
    p = edge_sub.add_parser("run", parents=[common], help="run a bundle like a Greengrass nucleus")
    p.add_argument("bundle", type=Path)
    p.add_argument("--source", help="camera index, video file, rtsp/http URL or folder (default: recipe)")
    p.add_argument("--once", action="store_true", help="classify what the source holds, print JSON lines")
    p.add_argument("--thing", default="local", help="the thing name ({iot:thingName})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"nucleus root (default {DEFAULT_WORK})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="configuration update")

    p = sub.add_parser("watch", parents=[common], help="the local device's IoT messages, live")
    p.add_argument("--topic", default="trashsorter/", help="topic prefix (default trashsorter/)")
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0 = never)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after S seconds (0 = never)")
    p.add_argument("--replay", action="store_true", help="print the messages received before it started too")
    inbox.register(sub, common)


def bundle(target: Any, model_id: str, out: Path, version: str) -> dict[str, Any]:
    settings = target.settings(PackageSettings, "PackageFunction")
    model = registry.get_model(model_id, table_name=settings.table_name, ddb=target.client("dynamodb"))
    if model is None:
        raise UsageError(f"no model {model_id} in the registry")
    uris = dict(model.get("packaged_artifact_uris") or {})
    if "onnx" not in uris or "edge_app" not in uris:
        raise CliError(f"model {model_id} has no edge component artifacts (packaged: {sorted(uris)})")
    recipe = greengrass_v2.write_bundle(
        out,
        component_name=settings.edge_component_name,
        version=version,
        model_id=model_id,
        artifact_uri=uris["onnx"],
        app_uri=uris["edge_app"],
        s3=target.client("s3"),
    )
    return {"recipe": str(recipe), "artifacts": sorted(p.name for p in out.glob("**/artifacts/*"))}


def configuration(args: argparse.Namespace, endpoint_url: str | None) -> dict[str, Any]:
    update: dict[str, Any] = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            update[key] = json.loads(raw)
        except json.JSONDecodeError:
            update[key] = raw
    if args.source:  # a path is taken from the working directory (the component runs elsewhere)
        local = Path(args.source).expanduser()
        update["Source"] = str(local.resolve()) if local.exists() else args.source
    if args.once:
        update.update(Output="jsonl", ExtraArgs="--once", LiveView={"Port": 0})  # no page for one pass
    elif "Output" not in update:
        update["Output"] = "iot-data" if endpoint_url else "jsonl"
    return update


def run_bundle(args: argparse.Namespace, ui: UI, endpoint_url: str | None) -> int:
    env = {"AWS_ENDPOINT_URL": endpoint_url} if endpoint_url else {}
    try:
        dependencies = dependency_runners(args.bundle, args.work, thing=args.thing)  # the model component
        runner = ComponentRunner(
            args.bundle,
            args.work,
            configuration=configuration(args, endpoint_url),
            thing=args.thing,
            env=env,
            dependencies=dependencies,
        )
        runner.install()
        if args.once:
            done = runner.run()
            ui.stream.write(done.stdout)  # the app's JSON lines, as they are
            ui.stream.flush()
            if done.returncode != 0:
                raise CliError(f"the component exited with {done.returncode}: {done.stderr[-1000:]}")
            return 0
        process = runner.start(stdout=None, stderr=None)
        if ui.json_mode:
            ui.emit_json({"component": runner.name, "version": runner.version, "pid": process.pid})
        ui.line(f"{runner.name} {runner.version} running (pid {process.pid}); Ctrl-C stops it")
        try:
            return process.wait()
        except KeyboardInterrupt:
            runner.stop()
            return 0
    except RecipeError as exc:
        raise CliError(str(exc)) from exc


def watch(
    target: Any, ui: UI, *, topic: str, count: int, timeout: float, replay: bool = False, poll_s: float = 0.3
) -> int:
    """Print what the local endpoint's IoT data plane receives (through the local device) from now on, as it
    arrives (``replay``: from the first message the endpoint kept); ``--json``: one JSON line per message."""
    from trashsorter_cli.commands.pipeline import device_request

    if not target.is_local or not target.device_url:
        raise UsageError(
            "`trashsorter watch` follows the local stack's device; on AWS use the IoT MQTT client"
        )
    messages_url = f"{target.device_url.rstrip('/')}/iot/messages"
    seen, after = 0, 0
    if not replay:  # start after the last message received so far, whatever its topic
        earlier = device_request(f"{messages_url}?after=0", timeout=10, token=target.device_token)
        earlier = earlier.get("messages", [])
        after = max((int(m["index"]) for m in earlier), default=0)
    deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
    query = urllib.parse.urlencode({"topic": topic})
    while time.monotonic() < deadline:
        answer = device_request(
            f"{messages_url}?after={after}&{query}", timeout=10, token=target.device_token
        )
        for message in answer.get("messages", []):
            after = max(after, int(message["index"]))
            if ui.json_mode:
                ui.emit_json_line(message)
            else:
                payload = message["payload"]
                summary = (
                    f"{payload.get('label')} {payload.get('confidence', 0):.3f}"
                    + (" (unsure)" if payload.get("unsure") else "")
                    if isinstance(payload, dict) and "label" in payload
                    else json.dumps(payload, sort_keys=True)
                )
                ui.line(f"{message['topic']}  {summary}")
            seen += 1
            if count and seen >= count:
                return 0
        time.sleep(poll_s)
    return 0 if seen else 1


COMMANDS = ("edge", "watch", "inbox", "label")


def handle(args: argparse.Namespace, ui: UI, resolve: Callable[[argparse.Namespace], Any]) -> int:
    if args.command in ("inbox", "label"):
        return inbox.handle(args, ui, resolve(args))
    if args.command == "watch":
        return watch(
            resolve(args), ui, topic=args.topic, count=args.count, timeout=args.timeout, replay=args.replay
        )
    if args.edge_command == "bundle":
        target = resolve(args)
        result = bundle(target, args.model_id, args.out, args.version)
        if ui.json_mode:
            ui.emit_json(result)
        else:
            ui.line(f"{result['recipe']} + artifacts/{{{', '.join(result['artifacts'])}}}")
        return 0
    endpoint_url = None
    if not args.once:
        try:
            target = resolve(args)
            endpoint_url = target.endpoint_url if target.is_local else None
            if target.is_local:
                target.activate()
        except (CliError, TrashsorterError):  # no local stack: the app prints to stdout instead
            endpoint_url = None
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return run_bundle(args, ui, endpoint_url)
