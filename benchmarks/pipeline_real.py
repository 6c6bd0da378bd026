"""The whole pipeline on a real photo collection: upload -> catalogue -> one training -> champion -> device.

``python -m benchmarks.pipeline_real --data ../shared/datasets/trashnet [--mapping JSON] [--out FILE]
[--write]``

Development data (the shared TrashNet set, 2,467 photos): nothing in the product needs it, and without
``--data`` present the benchmark says so and exits 0 (skipped). Method: the embedded local stack
(``trashsorter_cli.local.runtime.LocalRuntime``: moto server on a free port, the stack from template.yaml,
the in-process dispatcher calling the real handlers, the CPU trainer as a child process, the local device),
in a temporary state folder, with the local stack's own defaults (``trashsorter local up``: the template's
training rule and quality gate, IngestSettleSeconds 10) and nothing lowered; ``--parameter
IngestSettleSeconds=60`` gives the template's AWS default instead, so that on a busy machine the settle timer
cannot find ingest quiet while photos are still queued. Every photo is uploaded with
``put_object`` under ``images/<Label>/<folder>/<file>`` per the mapping (default: the demo mapping of
samples/trashnet/mapping.json, the six materials onto the recipe's three bins). Then, polling every 0.5 s:

* catalogued: the per-label counters (every status) add up to the photos uploaded;
* training start: the stack's first run record;
* artifact: ``training-output/<job>/output/model.tar.gz`` in S3;
* champion: ``registry.get_champion``; device: the champion's first deployment record.

Memory: every 0.5 s, the resident memory (RSS) and proportional set size (PSS) of each child process tree
of this process (the trainer and its data-loader workers are one tree); the trainer's tree is the one whose
command runs the training program. The trainer's own record (``metrics.json`` ``resources``, ru_maxrss) is
read from the artifact, with its validation accuracy and 95 % intervals. Timings are wall clock on a
machine that may be shared: the 1-minute load average is logged with every step.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_end_to_end import _wait
from benchmarks.common import SAMPLES, Result, Section, write_report
from benchmarks.trainer_memory import _rollup, _tree

POLL_S = 0.5
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "trashnet"


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"{stamp} load {os.getloadavg()[0]:.2f} {message}", file=sys.stderr, flush=True)


class TreeWatch:
    """Peak RSS / PSS of every child process tree of this process, by the tree root's command line."""

    def __init__(self) -> None:
        self.peaks: dict[str, dict[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._done.is_set():
            for root in _tree(me)[1:]:
                try:
                    command = Path(f"/proc/{root}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    parent = int(Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent != me:
                    continue  # only the roots of the child trees
                rolls = [_rollup(p) for p in _tree(root)]
                name = command.strip()[:160]
                peak = self.peaks.setdefault(name, {"rss_mib": 0.0, "pss_mib": 0.0, "processes": 0})
                peak["rss_mib"] = max(peak["rss_mib"], sum(r.get("Rss", 0) for r in rolls) / 1024**2)
                peak["pss_mib"] = max(peak["pss_mib"], sum(r.get("Pss", 0) for r in rolls) / 1024**2)
                peak["processes"] = max(peak["processes"], len(rolls))
            time.sleep(POLL_S)

    def trainer(self) -> dict[str, float]:
        found = [p for name, p in self.peaks.items() if "entry" in name or "train" in name]
        return max(found, key=lambda p: p["rss_mib"]) if found else {}


def photos(data: Path, mapping: dict[str, list[str]]) -> list[tuple[str, Path]]:
    return [
        (f"images/{label}/{folder}/{photo.name}", photo)
        for label, folders in mapping.items()
        for folder in folders
        for photo in sorted((data / folder).glob("*.jpg"))
    ]


def run_pipeline(
    data: Path, mapping: dict[str, list[str]], timeout: float, parameters: dict[str, str] | None = None
) -> dict[str, Any]:
    from trashsorter import registry, runs
    from trashsorter.schema import label_counts_key
    from trashsorter_cli.local.runtime import LocalRuntime

    todo = photos(data, mapping)
    marks: dict[str, float] = {}
    loads: dict[str, float] = {}
    out: dict[str, Any] = {"photos": len(todo), "mapping": mapping, "parameters": parameters or {}}
    out["reached"] = "start"

    def mark(name: str) -> None:
        marks[name] = time.perf_counter()
        loads[name] = round(os.getloadavg()[0], 2)
        out["reached"] = name
        log(f"reached {name}")

    # ignore_cleanup_errors: a device app still installing when the stack stops must not lose the result
    with (
        tempfile.TemporaryDirectory(prefix="pipeline-real-", ignore_cleanup_errors=True) as tmp,
        TreeWatch() as watch,
    ):
        runtime = LocalRuntime(
            port=None,
            state_path=Path(tmp) / "state.json",
            log_file=Path(tmp) / "local.log",
            overrides=parameters,
        )
        runtime.start()
        try:
            assert runtime.stack is not None
            s3, ddb = runtime.client("s3"), runtime.client("dynamodb")
            bucket = runtime.stack.outputs["ImagesBucketName"]
            table = runtime.stack.outputs["CatalogueTableName"]
            mark("first upload")
            for n, (key, photo) in enumerate(todo, 1):
                s3.put_object(Bucket=bucket, Key=key, Body=photo.read_bytes())
                if n % 500 == 0:
                    log(f"uploaded {n}")
            mark("last upload")

            def catalogued() -> bool:
                total = 0
                for label in mapping:
                    item = ddb.get_item(
                        TableName=table, Key={k: {"S": v} for k, v in label_counts_key(label).items()}
                    )
                    counts = item.get("Item", {})
                    total += sum(int(v["N"]) for v in counts.values() if "N" in v)
                if int(time.monotonic()) % 60 == 0:
                    log(f"catalogued {total} / {len(todo)}")
                out["catalogued"] = total
                return total >= len(todo)

            _wait("every photo catalogued", catalogued, timeout, POLL_S)
            mark("catalogued")
            listed = _wait("a training run", lambda: runs.list_runs(table, ddb=ddb), timeout, POLL_S)
            mark("training start")
            run_id, job = str(listed[0]["run_id"]), str(listed[0]["job_name"])
            artifact = f"training-output/{job}/output/model.tar.gz"

            def artifact_written() -> bool:
                record = runs.get_run(table, run_id, ddb=ddb) or {}
                if record.get("status") in ("failed", "stopped"):
                    raise RuntimeError(f"run ended {record['status']}: {record.get('status_message')}")
                return s3.list_objects_v2(Bucket=bucket, Prefix=artifact).get("KeyCount", 0) > 0

            _wait("the training artifact", artifact_written, timeout, POLL_S)
            mark("artifact")
            body = s3.get_object(Bucket=bucket, Key=artifact)["Body"].read()
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                member = tar.extractfile("metrics.json")
                out["metrics"] = json.loads(member.read()) if member else {}

            def champion() -> Any:
                record = runs.get_run(table, run_id, ddb=ddb) or {}
                if record.get("status") in ("failed", "stopped", "rejected"):
                    raise RuntimeError(f"run ended {record['status']}: {record.get('status_message')}")
                return registry.get_champion(table_name=table, ddb=ddb)

            model = _wait("a champion", champion, timeout, POLL_S)
            mark("champion")
            model_id = str(model["model_id"])
            deployments = lambda: registry.list_deployments(model_id, table_name=table, ddb=ddb)  # noqa: E731
            _wait("a deployment", deployments, 600, POLL_S)
            mark("device")
            out["run"] = {k: str(v) for k, v in (runs.get_run(table, run_id, ddb=ddb) or {}).items()}
        except Exception as exc:  # noqa: BLE001 - record what was reached, and why it stopped
            out["error"] = f"{type(exc).__name__}: {exc}"
            log(f"stopped: {out['error']}")
        finally:
            runtime.stop()
    start = marks.get("first upload", 0.0)
    out["seconds_from_first_upload"] = {k: round(v - start, 1) for k, v in marks.items()}
    out["load_average_at"] = loads
    out["watched_peak_mib"] = {k: {n: round(x, 1) for n, x in v.items()} for k, v in watch.peaks.items()}
    out["trainer_watched_peak_mib"] = watch.trainer()
    return out


def section(result: dict[str, Any]) -> Section:
    seconds, loads = result["seconds_from_first_upload"], result["load_average_at"]
    metrics = result.get("metrics", {})
    used = metrics.get("resources", {})
    watched = result.get("trainer_watched_peak_mib", {})
    low, high = min(loads.values(), default=0), max(loads.values(), default=0)
    note = f"{result['photos']} photos, {len(result['mapping'])} labels; load average {low}-{high}"
    rows = [
        Result("pipeline 2,467", "reached", result["reached"], notes=result.get("error", "")[:180]),
    ]
    if "catalogued" in seconds:
        rate = result["photos"] / max(seconds["catalogued"], 1e-9)
        rows.append(
            Result(
                "pipeline 2,467",
                "upload -> catalogued",
                f"{seconds['catalogued']:.0f} s ({rate:.1f} photos/s)",
                notes=note,
            )
        )
    if "champion" in seconds:
        rows.append(
            Result("pipeline 2,467", "upload -> champion", f"{seconds['champion']:.0f} s", notes=note)
        )
    if "training start" in seconds and "artifact" in seconds:
        rows.append(
            Result(
                "pipeline 2,467",
                "training (start -> artifact)",
                f"{seconds['artifact'] - seconds['training start']:.0f} s",
            )
        )
    if used:
        config = metrics.get("config", {})
        tree = (
            f"; tree {watched['rss_mib']} MiB RSS / {watched.get('pss_mib', '?')} MiB PSS"
            if watched.get("rss_mib")
            else f"; largest loader worker {used.get('largest_worker_peak_memory_mb')} MiB (shares pages)"
        )
        rows.append(
            Result(
                "pipeline 2,467",
                "trainer peak memory",
                f"{used.get('peak_memory_mb')} MiB (ru_maxrss){tree}",
                "< 4 GB",
                float(watched.get("pss_mib") or used.get("peak_memory_mb") or 0) < 4096,
                f"{used.get('photos')} photos, {config.get('image_size')} px, {config.get('views')} views; "
                f"feature cache {used.get('feature_cache_mb')} MB on disk",
            )
        )
    if metrics.get("confusion_matrix"):
        from trashsorter_trainer import report

        ci = report.intervals(metrics["confusion_matrix"], metrics["labels"])
        low, high = ci["accuracy"]
        recalls = ", ".join(
            f"{label} {metrics['per_class'][label]['recall']:.3f} ({lo:.2f}-{hi:.2f})"
            for label, (lo, hi) in ci["recall"].items()
        )
        rows.append(
            Result(
                "pipeline 2,467",
                "validation accuracy",
                f"{metrics['validation_accuracy']:.3f} ({low:.2f}-{high:.2f})",
                notes=f"{metrics.get('validation_count')} validation photos (hash split); recall {recalls}",
            )
        )
    details = [result["note"], ""] if result.get("note") else []
    details += [
        "```json",
        json.dumps({k: v for k, v in result.items() if k not in ("metrics", "note")}),
        "```",
    ]
    return Section("Pipeline at real size (local stack)", results=rows, method=__doc__ or "", details=details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_real", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="one folder of photos per material")
    parser.add_argument("--mapping", type=Path, default=SAMPLES / "mapping.json", help="label -> folders")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds each step may take")
    parser.add_argument(
        "--parameter", action="append", default=[], metavar="KEY=VALUE", help="a template parameter override"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/results.md")
    parser.add_argument("--from-json", type=Path, help="write the section of an earlier run's --out file")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        write_report([section(result)])
        return 0
    if not args.data.is_dir():
        print(f"skipped: no photo collection at {args.data} (development data; see the module docstring)")
        return 0
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    mapping = {k: v for k, v in json.loads(args.mapping.read_text()).items() if not k.startswith("_")}
    started = time.perf_counter()
    parameters = dict(item.split("=", 1) for item in args.parameter)
    result = run_pipeline(args.data, mapping, args.timeout, parameters)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.write:
        done = section(result)
        done.seconds = time.perf_counter() - started
        write_report([done])
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
