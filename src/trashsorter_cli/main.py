"""``trashsorter``: the command line of the local stack and of a deployed stack (see docs/cli.md).

Exit codes: 0 success, 1 an operation failed (endpoint down, nothing to train, training failed, AWS
error), 2 the request is wrong (unknown label, prediction against a deployed stack, bad arguments).
Expected errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter.errors import TrainingRuleNotMet, TrashsorterError
from trashsorter_cli.ui import UI, CliError, printable


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--stack", help="a deployed stack's name (default: the running local stack)")
    common.add_argument("--profile", help="AWS profile (with --stack)")
    common.add_argument("--region", help="AWS region (with --stack)")
    common.add_argument(
        "--local-state", type=Path, default=None, help="local state file (default .trashsorter/local.json)"
    )
    common.add_argument(
        "--verbose",
        action="store_true",
        help="show the handlers' logs on the console (stderr) instead of only in the log file",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="trashsorter",
        description="Labelled photos in S3 -> a trained trash classifier on the edge camera.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("upload", parents=[common], help="upload DIR/<Label>/* to images/<Label>/")
    p.add_argument("directory", type=Path)
    p.add_argument(
        "--map", type=Path, dest="mapping", help="JSON label -> [folders] (samples/trashnet/mapping.json)"
    )
    p.add_argument(
        "--force", action="store_true", help="upload unknown label folders too (ingest rejects them)"
    )
    p.add_argument(
        "--wait", action="store_true", help="wait until ingest has catalogued every uploaded photo"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")

    sub.add_parser(
        "status", parents=[common], help="catalogue counts, threshold, runs, champion, deployments"
    )

    p = sub.add_parser("images", parents=[common], help="catalogue records")
    p.add_argument("--status", choices=["accepted", "rejected", "duplicate", "conflict", "deleted"])
    p.add_argument("--label")

    p = sub.add_parser("train", parents=[common], help="trigger training now (the rule must be met)")
    p.add_argument("--wait", action="store_true", help="follow the run to its end")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds --wait waits (default 1800)")
    p.add_argument("--force", action="store_true", help="start even if the rule is not met (logged)")
    p.add_argument(
        "--new",
        action="store_true",
        help="ask for another run although one is training or a batch is settling (queued behind it; "
        "the rule is checked again when it may start)",
    )

    p = sub.add_parser("predict", parents=[common], help="classify images with the local device's model")
    p.add_argument("images", nargs="+", type=Path)

    p = sub.add_parser("deploy", parents=[common], help="redeploy a registered model (rollback)")
    p.add_argument("--model", required=True, dest="model_id")
    p.add_argument("--force", action="store_true", help="deploy a model the quality gate rejected")

    sub.add_parser("reindex", parents=[common], help="rebuild the catalogue from the bucket")

    local = sub.add_parser("local", help="the embedded local stack")
    local_sub = local.add_subparsers(dest="local_command", required=True, metavar="up|down|status|reset")
    p = local_sub.add_parser("up", parents=[common], help="start the local stack (foreground)")
    p.add_argument("--port", type=int, default=4566, help="endpoint port (default 4566; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--stack-name", default="trashsorter")
    p.add_argument(
        "--parameter-overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="template parameters, as sam deploy takes them",
    )
    p.add_argument("--no-device", action="store_true", help="do not start the local device")
    local_sub.add_parser("down", parents=[common], help="stop the running local stack")
    local_sub.add_parser("status", parents=[common], help="is the local stack running?")
    p = local_sub.add_parser(
        "reset", parents=[common], help="wipe the local stack's persisted state (it must be stopped)"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("demo", parents=[common], help="the whole pipeline on the sample photos, offline")
    p.add_argument("--samples", type=Path, default=None, help="default samples/trashnet")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--keep-running", action="store_true", help=argparse.SUPPRESS)
    from trashsorter_cli.commands import edge  # edge bundle|run, watch, inbox, label

    edge.register(sub, common)
    from trashsorter_cli.commands import report

    report.register(sub, common)
    from trashsorter_cli.commands import suspects

    suspects.register(sub, common)
    return parser


def _target(args: argparse.Namespace) -> Any:
    from trashsorter_cli.targets import resolve_target

    return resolve_target(
        stack=args.stack, local_state=args.local_state, region=args.region, profile=args.profile
    )


def run(args: argparse.Namespace, ui: UI) -> int:
    command = args.command
    if command == "local":
        from trashsorter_cli.commands import local

        if args.local_command == "up":
            return local.up(
                ui,
                port=args.port,
                host=args.host,
                stack_name=args.stack_name,
                region=args.region or "us-east-1",
                parameter_overrides=list(args.parameter_overrides),
                state_path=args.local_state,
                device=not args.no_device,
                verbose=args.verbose,
            )
        if args.local_command == "reset":
            result = local.reset(ui, state_path=args.local_state, yes=args.yes)
        elif args.local_command == "down":
            result = local.down(ui, state_path=args.local_state)
        else:
            result = local.status(state_path=args.local_state)
        if ui.json_mode:
            ui.emit_json(result)
        elif args.local_command in ("down", "reset"):
            ui.line(result["message"])
        elif "pid" not in result:  # no state file: a clean `local down` (or never started)
            ui.line(f"local stack stopped (no {result['state_file']}; start it with `trashsorter local up`)")
        else:
            state = {
                "running": "running",
                "busy": f"running but not answering ({result['problem']})",
                "stopped": "NOT running (its process is gone; the state file is stale)",
            }[result["state"]]
            ui.line(
                f"local stack {result['stack_name']} {state}: {result['endpoint_url']} (pid {result['pid']})"
            )
            ui.line(
                f"images bucket {result['outputs'].get('ImagesBucketName', '?')}; "
                f"device {result['device_url'] or '-'}"
            )
        return 0 if args.local_command != "status" or result["running"] or not result["problem"] else 1

    if command in ("edge", "watch", "inbox", "label"):
        from trashsorter_cli.commands import edge

        return edge.handle(args, ui, _target)
    if command == "demo":
        from trashsorter_cli import demo

        return demo.run_demo(ui, samples=args.samples, timeout=args.timeout)

    from trashsorter_cli.commands import data, pipeline, report

    target = _target(args)
    if command == "report":
        return report.handle(args, ui, target)
    if command == "suspects":
        from trashsorter_cli.commands import suspects

        return suspects.handle(args, ui, target)
    if command == "upload":
        mapping = data.load_mapping(args.mapping) if args.mapping else None
        plan = data.plan_upload(args.directory, target.labels, mapping=mapping, force=args.force)
        result = data.upload(target, plan, ui)
        if not ui.json_mode:
            ui.line(
                f"uploaded {result['uploaded']}, unchanged (skipped) {result['skipped']} -> s3://{result['bucket']}/"
            )
            if result["unknown_labels"]:
                ui.line(f"unknown labels uploaded with --force: {', '.join(result['unknown_labels'])}")
        if args.wait:
            result["catalogued"] = data.wait_catalogued(target, result["keys"], ui, timeout=args.timeout)
            ui.line(
                f"catalogued {sum(result['catalogued'].values())} of {result['uploaded']}: "
                + ", ".join(f"{n} {status}" for status, n in result["catalogued"].items())
            )
        if ui.json_mode:
            ui.emit_json({k: v for k, v in result.items() if k != "keys"})
        return 0
    if command == "status":
        status = pipeline.gather_status(target)
        if ui.json_mode:
            ui.emit_json(status)
        else:
            pipeline.render_status(ui, status)
        return 0
    if command == "images":
        rows = data.list_images(target, status=args.status, label=args.label)
        if ui.json_mode:
            ui.emit_json(
                [{k: r[k] for k in ("key", "label", "status", "reason", "near_twins")} for r in rows]
            )
        else:
            ui.table(
                f"{len(rows)} images",
                ["key", "label", "status", "reason"],
                [[r["key"], r["label"], r["status"], r["reason"]] for r in rows],
            )
        return 0
    if command == "train":
        since = datetime.now(UTC).isoformat()
        follow = None if args.new else pipeline.run_to_follow(target)
        if follow is not None and args.wait and follow["kind"] == "batch":
            follow = pipeline.await_batch(target, ui, timeout=args.timeout)
        if follow is not None and not args.wait:
            if ui.json_mode:
                ui.emit_json({"following": follow["kind"], "run": follow["run"], "reason": follow["message"]})
            else:
                ui.line(f"no new run requested: {follow['message']} (train --new asks for another)")
            return 0
        if follow is not None:  # --wait on the run that is training (or the batch's, once it started)
            ui.line(f"following: {follow['message']} (train --new asks for another run)")
            since = str(follow["run"]["created_at"])
            final = pipeline.wait_for_run(target, ui, since=since, timeout=args.timeout)
            return _train_result(target, ui, final)
        try:
            triggered = pipeline.trigger_training(target, force=args.force)
        except TrainingRuleNotMet as exc:
            missing = ", ".join(f"{n} more {label}" for label, n in exc.missing.items())
            raise CliError(
                f"nothing to train: {exc}"
                + (f" (missing {missing})" if missing and missing not in str(exc) else "")
            ) from exc
        if not args.wait:
            if ui.json_mode:
                ui.emit_json(triggered)
            else:
                forced = "forced, the rule is not met: " if triggered["forced"] else ""
                ui.line(f"training requested: {forced}{triggered['reason']}")
            return 0
        final = pipeline.wait_for_run(target, ui, since=since, timeout=args.timeout)
        return _train_result(target, ui, final)
    if command == "predict":
        results = pipeline.predict(target, args.images)
        failed = [r for r in results if "error" in r]
        if ui.json_mode:
            ui.emit_json(results)
        else:
            ui.table(
                "Predictions",
                ["image", "label", "confidence"],
                [
                    [r["image"], "error", r["error"]]
                    if "error" in r
                    else [
                        r["image"],
                        r["label"],
                        f"{r['confidence']:.3f}" + (" unsure" if r["unsure"] else ""),
                    ]
                    for r in results
                ],
            )
            unsure = sum(1 for r in results if r.get("unsure"))
            if unsure:
                ui.line(
                    f"{unsure} of {len(results)} answers are unsure (confidence under the device's threshold)"
                )
            if failed:
                ui.line(f"{len(failed)} of {len(results)} images failed")
        return 1 if failed else 0
    if command == "deploy":
        outcome = pipeline.redeploy(target, args.model_id, force=args.force)
        if ui.json_mode:
            ui.emit_json(outcome)
        else:
            ui.line(f"model {args.model_id}: {outcome['outcome']} ({outcome['reason']})")
        return 0 if outcome["outcome"] in ("deployed", "registered") else 1
    if command == "reindex":
        summary = data.reindex(target)
        if ui.json_mode:
            ui.emit_json(summary)
        else:
            ui.line("reindexed: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.items())))
        return 0
    raise CliError(f"unknown command {command}", exit_code=2)


def _train_result(target: Any, ui: UI, final: dict[str, Any]) -> int:
    """The end of ``train --wait``: the run's outcome, the model's summary; exit 1 when it failed or was
    gated out."""
    from trashsorter_cli.commands import pipeline, report

    if ui.json_mode:
        ui.emit_json(final)
    else:
        ui.line(f"run {final['job_name']}: {final['status']}, model {final['package_outcome'] or '-'}")
    if not ui.json_mode:  # also for a gated-out model: its report says why
        report.wait_summary(target, ui, str(final.get("model_id") or ""))
    pipeline.check_run(final)
    return 0


def main(
    argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """Entry point; ``stdout``/``stderr`` default to the process's (tests pass their own buffers)."""
    try:
        return _main(argv, stdout=stdout, stderr=stderr)
    except BrokenPipeError:
        return _closed_pipe()


def _main(argv: Sequence[str] | None, *, stdout: IO[str] | None, stderr: IO[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    finally:
        if stdout is None:
            sys.stdout.flush()  # --help into a closed pipe fails here, inside the BrokenPipeError handler
    ui = UI(json_mode=bool(getattr(args, "json", False)), stream=stdout)
    err = stderr if stderr is not None else sys.stderr
    try:
        # `local up` routes its stack's logs itself; in-process callers (tests) pass their own streams and
        # keep the process's logging as it is.
        if stdout is None and not (args.command == "local" and args.local_command == "up"):
            route_logs(args, err)
        code = run(args, ui)
        if stdout is None:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except CliError as exc:
        print(f"trashsorter: error: {printable(str(exc))}", file=err)
        return exc.exit_code
    except TrashsorterError as exc:
        print(f"trashsorter: error: {printable(str(exc))}", file=err)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"trashsorter: AWS error: {printable(str(exc))}", file=err)
        return 1
    except KeyboardInterrupt:
        print("trashsorter: interrupted", file=err)
        return 130


def route_logs(args: argparse.Namespace, err: IO[str]) -> None:
    """Domain code a command runs in this process (reindex's ingest, train's trigger) logs JSON lines through
    the one Logger; they go to the log file, or to stderr with ``--verbose``, never onto stdout."""
    import logging

    from trashsorter.observability import logger

    handler = getattr(logger, "registered_handler", None)
    if not isinstance(handler, logging.StreamHandler):
        return
    if getattr(args, "verbose", False):
        handler.setStream(err)
        return
    from trashsorter_cli.local.server import default_log_file

    path = default_log_file(getattr(args, "local_state", None))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler.setStream(path.open("a", encoding="utf-8", buffering=1))
    except OSError:
        handler.setStream(err)  # no writable log file: stderr still keeps stdout clean


def _closed_pipe() -> int:
    """The reader of stdout went away (``trashsorter images | head -1``): no traceback, no further output.

    stdout is pointed at /dev/null so that the interpreter's final flush does not fail again; the exit code is
    the shell's for a process ended by SIGPIPE (128 + 13).
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
