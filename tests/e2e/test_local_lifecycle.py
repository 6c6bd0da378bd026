"""The local stack as a person lives in it: liveness, delete events, children that stop with it, predict."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import SAMPLES_DIR as SAMPLES
from trashsorter.catalogue import Catalogue
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.main import main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory({"MinImagesPerLabel": "500"}, device=True)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _stack_parts(runtime: LocalRuntime) -> tuple[Any, str, Catalogue]:
    """The S3 client, images bucket and catalogue of a running stack (with its dispatcher)."""
    assert runtime.stack is not None and runtime.dispatcher is not None
    outputs = runtime.stack.outputs
    catalogue = Catalogue(outputs["CatalogueTableName"], ddb=runtime.client("dynamodb"))
    return runtime.client("s3"), outputs["ImagesBucketName"], catalogue


def _photo(n: int) -> bytes:
    return sorted((SAMPLES / "paper").glob("*.jpg"))[n].read_bytes()


def test_status_answers_20_of_20_with_hundreds_of_objects_and_a_slow_state_dump(
    local_stack: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Liveness never reads moto's whole state: with it made as slow as a big stack's, status still works."""
    from moto.core import model_instances

    s3, bucket, _ = _stack_parts(local_stack)
    sub = uuid.uuid4().hex[:8]
    for i in range(300):  # not images: catalogued as rejected, but they are objects of the stack
        s3.put_object(Bucket=bucket, Key=f"images/Compost/{sub}/n{i:03d}.jpg", Body=b"x" * 64)

    class SlowStateDump(dict[str, Any]):
        """What /moto-api/data.json iterates: as slow as a stack holding a lot of data."""

        def __iter__(self) -> Any:
            time.sleep(10)
            return super().__iter__()

    monkeypatch.setattr(model_instances, "model_data", SlowStateDump(model_instances.model_data))
    answered = 0
    for _ in range(20):
        code, out, err = _cli("status", "--json", "--local-state", str(local_stack.state_path))
        assert "not answering" not in err and "busy" not in err, err
        answered += code == 0 and "labels" in json.loads(out)
    assert answered == 20


def test_deleting_a_conflicting_copy_through_the_plain_endpoint_counts_the_survivor(
    local_stack: LocalRuntime,
) -> None:
    """aws s3 rm on a versioned bucket = a delete marker; S3 sends ObjectRemoved:DeleteMarkerCreated."""
    s3, bucket, catalogue = _stack_parts(local_stack)
    sub = uuid.uuid4().hex[:8]
    keep, drop = f"images/Recycling/{sub}/same.jpg", f"images/Compost/{sub}/same.jpg"
    body = _photo(5)
    for key in (keep, drop):
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert local_stack.dispatcher.wait_idle(timeout=60, settle=0.5)
    before = catalogue.label_counts(["Recycling"])["Recycling"]["accepted"]
    assert (catalogue.get_image(keep) or {}).get("status") == "conflict"

    s3.delete_object(Bucket=bucket, Key=drop)  # no VersionId: a delete marker, as `aws s3 rm` makes
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (catalogue.get_image(keep) or {}).get("status") == "accepted":
            break
        time.sleep(0.2)
    assert (catalogue.get_image(keep) or {}).get("status") == "accepted"
    assert (catalogue.get_image(drop) or {}).get("status") == "deleted"
    assert catalogue.label_counts(["Recycling"])["Recycling"]["accepted"] == before + 1


def test_deleting_one_version_sends_object_removed_delete(local_stack: LocalRuntime) -> None:
    """A version deleted by id (others remain) is a permanent delete: S3 sends ObjectRemoved:Delete."""
    s3, bucket, catalogue = _stack_parts(local_stack)
    key = f"images/Landfill/{uuid.uuid4().hex[:8]}/v.jpg"
    first = s3.put_object(Bucket=bucket, Key=key, Body=_photo(7))["VersionId"]
    s3.put_object(Bucket=bucket, Key=key, Body=_photo(8))
    assert local_stack.dispatcher.wait_idle(timeout=60, settle=0.5)
    newest = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"][0]["VersionId"]
    s3.delete_object(Bucket=bucket, Key=key, VersionId=newest)  # the older version is current again
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (catalogue.get_image(key) or {}).get("version_id") != first:
        time.sleep(0.2)
    record = catalogue.get_image(key) or {}
    assert record.get("version_id") == first and record.get("status") == "accepted"


def _children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_trainer_child_dies_with_the_stack(tmp_path: Path, how: str) -> None:
    """A trainer started the way the stack starts it (``children.spawn`` from a job thread, as the emulated
    SageMaker job runs ``train.py``) stops with it."""
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexec sleep 300\n")
    fake_python.chmod(0o755)
    script = tmp_path / "stack.py"
    script.write_text(
        "import signal, subprocess, sys, threading\n"
        "from trashsorter_cli.local import children\n"
        "signal.signal(signal.SIGTERM, lambda *a: (children.stop_all(), sys.exit(0)))\n"
        "def job():  # sagemaker_jobs.JobEmulator.run: spawn, then read the child's log to its end\n"
        f"    child = children.spawn([{str(fake_python)!r}, 'train.py'], log=subprocess.PIPE)\n"
        "    for _line in child.stdout:\n"
        "        pass\n"
        "    child.wait()\n"
        "threading.Thread(target=job, daemon=True).start()\n"
        "print('started', flush=True)\n"
        "threading.Event().wait()\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        kids: set[int] = set()
        while not kids and time.monotonic() < deadline:
            kids = _children_of(proc.pid)
            time.sleep(0.1)
        assert kids, "the trainer child never started"
        assert all(os.getsid(k) == k for k in kids)  # its own session and process group
        os.kill(proc.pid, getattr(signal, how))
        proc.wait(20)
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kids), f"trainer outlived the stack ({how})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_predict_gives_one_result_or_one_error_per_file_and_goes_on(
    local_stack: LocalRuntime, tmp_path: Path
) -> None:
    """Files ingest would refuse get ingest's reason; the batch goes on; exit 1 when any file failed."""
    from PIL import Image

    gif, tiny, missing = tmp_path / "anim.gif", tmp_path / "tiny.png", tmp_path / "missing.jpg"
    Image.new("RGB", (128, 128)).save(gif, format="GIF")
    Image.new("RGB", (32, 32)).save(tiny, format="PNG")
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[0]
    state = str(local_stack.state_path)
    code, out, err = _cli(
        "predict", str(gif), str(tiny), str(missing), str(photo), "--json", "--local-state", state
    )
    assert code == 1, err
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(gif), str(tiny), str(missing), str(photo)]
    assert results[0]["error"].startswith("ingest would refuse it: unsupported_format:")
    assert results[1]["error"].startswith("ingest would refuse it: too_small:")
    assert results[2]["error"].startswith("cannot read it:")
    assert "no model deployed" in results[3]["error"]  # the fresh stack's device has no model
    assert "{" not in results[3]["error"] and " object at 0x" not in results[3]["error"]
    code, out, _ = _cli("predict", str(gif), "--local-state", state)
    assert code == 1 and str(gif) in out and "unsupported_format" in out


def test_a_new_stack_s_device_serves_no_model_left_by_an_earlier_one(local_stack_factory: Any) -> None:
    """The device serves the champion the registry names: a fresh state names none, so a model left on disk
    by an earlier stack goes."""
    first = local_stack_factory({"MinImagesPerLabel": "500"}, device=True)
    first.stop()
    earlier = first.state_dir / "device"
    earlier.mkdir(parents=True, exist_ok=True)
    (earlier / "current.json").write_text(json.dumps({"model_id": "old", "model_dir": str(earlier)}))
    runtime = LocalRuntime(port=None, stack_name="ts-e2e-again", state_path=first.state_path, device=True)
    runtime.start()
    try:
        assert not (earlier / "current.json").exists()
        code, out, err = _cli("status", "--json", "--local-state", str(runtime.state_path))
        assert code == 0, err
        assert json.loads(out)["champion"] is None
        with urllib.request.urlopen(f"{runtime.device_url}/status", timeout=10) as resp:  # noqa: S310
            assert json.loads(resp.read())["model_id"] is None
    finally:
        runtime.stop()


def test_status_counts_rejections_under_unknown_folders_and_says_ingest_is_in_progress(
    local_stack: LocalRuntime,
) -> None:
    s3, bucket, _ = _stack_parts(local_stack)
    state = str(local_stack.state_path)
    local_stack.dispatcher.stop()  # ingest paused: the upload waits in the queue
    try:
        s3.put_object(Bucket=bucket, Key=f"images/Glass/{uuid.uuid4().hex[:8]}/g.jpg", Body=_photo(1))
        code, out, err = _cli("status", "--local-state", state)
        assert code == 0, err
        assert "ingest in progress: 1 messages queued" in out
        before = json.loads(_cli("status", "--json", "--local-state", state)[1])["rejected_other_folders"]
    finally:
        local_stack.dispatcher.start()
    assert local_stack.dispatcher.wait_idle(timeout=60, settle=0.5)
    code, out, err = _cli("status", "--json", "--local-state", state)
    status = json.loads(out)
    assert status["ingest_queued"] == 0
    assert status["rejected_other_folders"] == before + 1  # unknown label "Glass": rejected, and counted
    code, out, err = _cli("status", "--local-state", state)
    assert "(other folders)" in out and "ingest in progress" not in out


def test_status_says_a_training_request_is_queued_behind_the_active_run(local_stack: LocalRuntime) -> None:
    from trashsorter import runs

    _, _, catalogue = _stack_parts(local_stack)
    ddb, table = local_stack.client("dynamodb"), catalogue.table_name
    state = str(local_stack.state_path)
    assert json.loads(_cli("status", "--json", "--local-state", state)[1])["training_queued"] is None
    assert runs.acquire_lock(ddb, table, "run-active", "ds-1")
    try:
        assert runs.mark_pending(ddb, table, "run-active", reason="threshold", dataset_id="ds-2")
        code, out, err = _cli("status", "--local-state", state)
        assert code == 0, err
        assert "a training request (threshold, since " in out
        assert "is queued behind the active run run-active" in out
    finally:
        runs.release_lock(ddb, table, "run-active", keep_pending=False)


def test_train_wait_says_it_is_queued_behind_the_active_run(local_stack: LocalRuntime) -> None:
    from trashsorter import runs
    from trashsorter_cli.commands.pipeline import wait_for_run
    from trashsorter_cli.local.server import read_state
    from trashsorter_cli.targets import local_target
    from trashsorter_cli.ui import UI, CliError

    _, _, catalogue = _stack_parts(local_stack)
    ddb, table = local_stack.client("dynamodb"), catalogue.table_name
    target = local_target(read_state(local_stack.state_path))
    out = io.StringIO()
    assert runs.acquire_lock(ddb, table, "run-active", "ds-1")
    try:
        with pytest.raises(CliError, match="timed out"):
            wait_for_run(target, UI(stream=out), since="9999", timeout=1.5, poll=0.2, ddb=ddb)
        own = io.StringIO()  # a lock taken after the request was sent is the request's own run starting
        with pytest.raises(CliError, match="timed out"):
            wait_for_run(target, UI(stream=own), since="0000", timeout=1.5, poll=0.2, ddb=ddb)
    finally:
        runs.release_lock(ddb, table, "run-active", keep_pending=False)
    assert "queued behind the active run run-active" in out.getvalue()
    assert "starting training run run-active" in own.getvalue()
    assert "queued behind" not in own.getvalue()
