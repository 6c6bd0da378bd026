"""End to end on the embedded local stack: last upload -> training start, completion -> deployment.

Method: ``trashsorter_cli.local.runtime.LocalRuntime`` (moto server on a free port, the stack from
template.yaml, the in-process dispatcher calling the real handlers, the CPU trainer, the local device),
with the rule lowered to the sample's size (MinImagesPerLabel=10, MinNewImages=30) and 2 training epochs
(the training itself is measured by the training benchmark). The 180 TrashNet photos are uploaded under
images/<Label>/ per samples/trashnet/mapping.json; then the catalogue is polled every 50 ms:

* upload -> start: from the last ``put_object`` returning to the first run record of the stack;
* completion -> deployment: from the trainer's artifact landing in S3 (``training-output/<job>/output/
  model.tar.gz``, written just before the completion event) to the first deployment record of its model
  (state-change event routed, gate, repack, registry, local-device deploy). The run record only turns
  ``completed`` when the package step finishes, so it cannot mark the start of this interval.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import SAMPLES, Result, Section

POLL_S = 0.05


def _wait(what: str, probe: Callable[[], Any], timeout: float, poll: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(poll)
    raise TimeoutError(f"{what} not seen within {timeout:.0f} s")


def run(quick: bool = False) -> Section:
    from trashsorter import registry, runs
    from trashsorter_cli.local.runtime import LocalRuntime

    mapping: dict[str, list[str]] = json.loads((SAMPLES / "mapping.json").read_text())
    section = Section("End to end (local stack)", method=__doc__ or "")
    with tempfile.TemporaryDirectory() as tmp:
        runtime = LocalRuntime(
            port=None,
            state_path=Path(tmp) / "state.json",
            log_file=Path(tmp) / "local.log",
            overrides={
                "MinImagesPerLabel": "10",
                "MinNewImages": "30",
                "MinValidationAccuracy": "0",
                "HyperparameterOverrides": json.dumps({"epochs": "2"}),
            },
        )
        runtime.start()
        try:
            assert runtime.stack is not None
            s3 = runtime.client("s3")
            ddb = runtime.client("dynamodb")
            bucket = runtime.stack.outputs["ImagesBucketName"]
            table = runtime.stack.outputs["CatalogueTableName"]
            for label, folders in mapping.items():
                for folder in folders:
                    for photo in sorted((SAMPLES / folder).glob("*.jpg")):
                        key = f"images/{label}/{folder}/{photo.name}"
                        s3.put_object(Bucket=bucket, Key=key, Body=photo.read_bytes())
            last_upload = time.perf_counter()
            listed = _wait("a training run", lambda: runs.list_runs(table, ddb=ddb), 300)
            started = time.perf_counter()
            run_id = str(listed[0]["run_id"])

            job = str(listed[0]["job_name"])
            artifact = f"training-output/{job}/output/model.tar.gz"

            def artifact_written() -> Any:
                r = runs.get_run(table, run_id, ddb=ddb) or {}
                if r.get("status") in ("failed", "stopped"):
                    raise RuntimeError(f"run ended {r['status']}: {r.get('status_message')}")
                listed = s3.list_objects_v2(Bucket=bucket, Prefix=artifact)
                return listed.get("KeyCount", 0) > 0

            _wait("the training artifact", artifact_written, 1800)
            finished = time.perf_counter()

            def deployed() -> Any:
                for model in registry.list_models(table_name=table, ddb=ddb):
                    found = registry.list_deployments(str(model["model_id"]), table_name=table, ddb=ddb)
                    if found:
                        return found
                return None

            _wait("a deployment", deployed, 600)
            deployed_at = time.perf_counter()
        finally:
            runtime.stop()
    section.results += [
        Result("end to end", "last upload -> training start", f"{started - last_upload:.1f} s", notes="180"),
        Result("end to end", "training (2 epochs, CPU)", f"{finished - started:.1f} s"),
        Result("end to end", "completion -> deployment", f"{deployed_at - finished:.1f} s", notes="device"),
    ]
    return section
