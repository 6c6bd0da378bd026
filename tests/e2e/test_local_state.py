"""The local stack's state survives `local down`/`local up` and `kill -9` (docs/local-mode.md, "State"), and
`trashsorter local reset` wipes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.cli import run_cli
from tests.support.stack import SAMPLES_DIR as SAMPLES
from tests.support.stack import tiny_training
from tests.support.waiting import wait_for
from trashsorter import runs
from trashsorter.catalogue import Catalogue
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.local.server import LocalState, read_state, write_state

pytestmark = pytest.mark.e2e
LABELS = ["Compost", "Landfill", "Recycling"]


def _photo(folder: str, n: int) -> bytes:
    return sorted((SAMPLES / folder).glob("*.jpg"))[n].read_bytes()


def _runtime(state_path: Path, stack_name: str) -> LocalRuntime:
    return LocalRuntime(
        port=None,
        stack_name=stack_name,
        overrides={"MinImagesPerLabel": "500"},
        state_path=state_path,
        device=False,
        retry_delay=1,
    )


def _parts(runtime: LocalRuntime) -> tuple[Any, str, Catalogue]:
    assert runtime.stack is not None
    outputs = runtime.stack.outputs
    return (
        runtime.client("s3"),
        outputs["ImagesBucketName"],
        Catalogue(outputs["CatalogueTableName"], ddb=runtime.client("dynamodb")),
    )


def _versions(s3: Any, bucket: str) -> list[tuple[Any, ...]]:
    listing = s3.list_object_versions(Bucket=bucket)
    found = [(v["Key"], v["VersionId"], v["IsLatest"], v["ETag"]) for v in listing.get("Versions", [])]
    found += [(m["Key"], m["VersionId"], m["IsLatest"], "marker") for m in listing.get("DeleteMarkers", [])]
    return sorted(found)


@pytest.fixture
def started() -> Iterator[list[LocalRuntime]]:
    """Runtimes a test starts; all stopped at the end, whatever happened."""
    runtimes: list[LocalRuntime] = []
    yield runtimes
    for runtime in runtimes:
        runtime.stop()


def test_objects_versions_and_catalogue_survive_stop_and_start(
    tmp_path: Path, started: list[LocalRuntime]
) -> None:
    state = tmp_path / "local.json"
    first = _runtime(state, "ts-e2e-state")
    started.append(first)
    first.start()
    s3, bucket, catalogue = _parts(first)
    keys = {
        "Compost": "images/Compost/p0.jpg",
        "Recycling": "images/Recycling/g0.jpg",
        "Landfill": "images/Landfill/t0.jpg",
    }
    s3.put_object(Bucket=bucket, Key=keys["Compost"], Body=_photo("paper", 0), ContentType="image/jpeg")
    s3.put_object(Bucket=bucket, Key=keys["Recycling"], Body=_photo("glass", 0))
    s3.put_object(Bucket=bucket, Key=keys["Recycling"], Body=_photo("glass", 1))  # a second version
    s3.put_object(Bucket=bucket, Key=keys["Landfill"], Body=_photo("trash", 0))
    s3.put_object(Bucket=bucket, Key="images/Landfill/gone.jpg", Body=_photo("trash", 1))
    assert first.dispatcher is not None and first.dispatcher.wait_idle(timeout=60, settle=0.5)
    s3.delete_object(Bucket=bucket, Key="images/Landfill/gone.jpg")  # a delete marker
    assert first.dispatcher.wait_idle(timeout=60, settle=0.5)
    versions, counts = _versions(s3, bucket), catalogue.label_counts(LABELS)
    records = {k: catalogue.get_image(k) for k in [*keys.values(), "images/Landfill/gone.jpg"]}
    assert counts["Recycling"]["accepted"] == 1 and counts["Landfill"]["deleted"] == 1, counts
    first.stop()

    second = _runtime(state, "ts-e2e-state")
    started.append(second)
    second.start()
    s3, bucket2, catalogue = _parts(second)
    assert bucket2 == bucket  # the same physical names (local rewrite 8)
    assert _versions(s3, bucket) == versions  # every version, with its id, and the delete marker
    assert catalogue.label_counts(LABELS) == counts
    assert {k: catalogue.get_image(k) for k in records} == records
    # the 4 image keys (5 versions + 1 delete marker) and the 5 content-addressed copies ingest stored
    # (datasets/objects/: 5 versions, plus one each for glass0 and trash1, re-tagged when their last key went)
    assert (second.restored["objects"], second.restored["versions"]) == (4 + 5, 6 + 7)
    assert second.healed["catalogue"]["ingested"] == 0  # nothing re-sent
    body = s3.get_object(Bucket=bucket, Key=keys["Compost"])
    assert body["Body"].read() == _photo("paper", 0) and body["ContentType"] == "image/jpeg"
    # the restored stack goes on: a delete reaches ingest and changes the counts
    s3.delete_object(Bucket=bucket, Key=keys["Compost"])
    wait_for(
        lambda: (catalogue.get_image(keys["Compost"]) or {}).get("status") == "deleted", 30, "the delete"
    )
    assert catalogue.label_counts(["Compost"])["Compost"]["accepted"] == counts["Compost"]["accepted"] - 1


@contextmanager
def _local_up(
    tmp_path: Path, stack_name: str, *overrides: str
) -> Iterator[tuple[subprocess.Popen[str], LocalState]]:
    """`trashsorter local up` in a subprocess, until its ready line; killed at the end if still alive."""
    state = tmp_path / "local.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trashsorter_cli.main", "local", "up", "--port", "0", "--no-device",
         "--stack-name", stack_name, "--local-state", str(state), "--parameter-overrides", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("trashsorter local stack ready"), ready
        yield proc, read_state(state)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _kill_9_and_restart(
    proc: subprocess.Popen[str], tmp_path: Path, stack_name: str, started: list[LocalRuntime]
) -> LocalRuntime:
    """SIGKILL the stack (no stop code runs), then start the same stack again from its state folder."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    runtime = _runtime(tmp_path / "local.json", stack_name)
    started.append(runtime)
    runtime.start()
    return runtime


def _client(state: LocalState, service: str) -> Any:
    return boto3.client(service, region_name=state.region, endpoint_url=state.endpoint_url)


def test_an_acknowledged_upload_survives_kill_9(tmp_path: Path, started: list[LocalRuntime]) -> None:
    with _local_up(tmp_path, "ts-e2e-kill", "MinImagesPerLabel=500") as (proc, state):
        bucket, body = state.outputs["ImagesBucketName"], _photo("glass", 2)
        put = _client(state, "s3").put_object(Bucket=bucket, Key="images/Recycling/k.jpg", Body=body)
        # at once: the upload's message may still be queued, never ingested
        runtime = _kill_9_and_restart(proc, tmp_path, "ts-e2e-kill", started)
    s3, bucket2, catalogue = _parts(runtime)
    assert bucket2 == bucket
    restored = s3.get_object(Bucket=bucket, Key="images/Recycling/k.jpg")
    assert restored["VersionId"] == put["VersionId"] and restored["Body"].read() == body
    record = (
        catalogue.get_image("images/Recycling/k.jpg") or {}
    )  # ingested before the kill, or healed at start
    assert record.get("status") == "accepted" and record.get("version_id") == put["VersionId"], record


def test_a_run_cut_off_by_kill_9_is_failed_and_releases_the_lock(
    tmp_path: Path, started: list[LocalRuntime]
) -> None:
    """The emulated SageMaker job dies with the stack; the restored lock must not block training forever."""
    with _local_up(tmp_path, "ts-e2e-run", "MinImagesPerLabel=2", "MinNewImages=0") as (proc, state):
        table = state.outputs["CatalogueTableName"]
        s3, ddb = _client(state, "s3"), _client(state, "dynamodb")
        for label, folder in (("Compost", "paper"), ("Landfill", "trash"), ("Recycling", "glass")):
            for n in range(2):
                key = f"images/{label}/{n}.jpg"
                s3.put_object(Bucket=state.outputs["ImagesBucketName"], Key=key, Body=_photo(folder, n))

        def active_run() -> dict[str, Any] | None:
            holder = str(runs.get_lock(table, ddb=ddb).get("holder") or "")
            run = runs.get_run(table, holder, ddb=ddb) if holder else None
            return run if run and run.get("status") in ("starting", "in_progress") else None

        run = wait_for(active_run, 120, "a training run to start")
        runtime = _kill_9_and_restart(proc, tmp_path, "ts-e2e-run", started)
    ddb = runtime.client("dynamodb")
    after = runs.get_run(table, str(run["run_id"]), ddb=ddb) or {}
    assert after.get("status") == "failed", after
    assert "did not survive the restart" in str(after.get("failure_reason")), after
    assert not runs.get_lock(table, ddb=ddb).get("holder")  # the next Dataset Ready may train
    assert runtime.healed["lost_run"]["run_id"] == run["run_id"]


def _state_files(root: Path) -> list[Path]:
    paths = [root / "state" / "snapshot.jsonl", root / "device" / "current.json", root / "jobs" / "j" / "x"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (root / "logs").mkdir(exist_ok=True)
    (root / "logs" / "trashsorter.log").write_text("kept")
    return paths


def test_local_reset_yes_wipes_the_state_and_the_device_model_and_keeps_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _state_files(tmp_path)
    code, out, err = run_cli(capsys, "local", "reset", "--yes", "--local-state", str(tmp_path / "local.json"))
    assert code == 0, err
    assert "wiped the local state" in out
    assert not any((tmp_path / name).exists() for name in ("state", "device", "jobs"))
    assert (tmp_path / "logs" / "trashsorter.log").read_text() == "kept"


@pytest.mark.parametrize(("answer", "code"), [("y\n", 0), ("n\n", 1), ("", 1)])
def test_local_reset_asks_first(tmp_path: Path, answer: str, code: int) -> None:
    paths = _state_files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "trashsorter_cli.main", "local", "reset",
         "--local-state", str(tmp_path / "local.json")],
        input=answer, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert "[y/N]" in result.stdout
    assert all(p.exists() for p in paths) is (code == 1)
    if code:
        assert result.stderr.strip() == "trashsorter: error: nothing wiped (answer y, or pass --yes)"


def test_local_reset_refuses_while_the_stack_runs_and_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _state_files(tmp_path)
    state = tmp_path / "local.json"
    write_state(LocalState(endpoint_url="http://127.0.0.1:9", region="us-east-1", stack_name="s", outputs={},
                           pid=os.getpid()), state)  # fmt: skip
    code, out, err = run_cli(capsys, "local", "reset", "--yes", "--local-state", str(state))
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"trashsorter: error: the local stack is running (pid {os.getpid()}); stop it with "
        "`trashsorter local down` first"
    ]
    assert all(p.exists() for p in paths)
    with pytest.raises(SystemExit) as usage:  # argparse: usage errors exit 2
        run_cli(capsys, "local", "reset", "--no-such-option")
    assert usage.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.slow
def test_the_device_serves_the_champion_the_restored_registry_names(
    tmp_path: Path, started: list[LocalRuntime]
) -> None:
    """Trained for real (tiny: 1 epoch, 96 px); after a restart the device keeps the champion it holds, and
    when its folder is gone the restored champion is deployed to it again."""
    import shutil
    import urllib.request

    from trashsorter import registry

    overrides = tiny_training(4)

    def start() -> LocalRuntime:
        runtime = LocalRuntime(port=None, stack_name="ts-e2e-champ", overrides=overrides,
                               state_path=tmp_path / "local.json", device=True, retry_delay=1)  # fmt: skip
        started.append(runtime)
        runtime.start()
        return runtime

    def device_status(runtime: LocalRuntime) -> dict[str, Any]:
        with urllib.request.urlopen(f"{runtime.device_url}/status", timeout=10) as resp:  # noqa: S310
            status: dict[str, Any] = json.loads(resp.read())
        return status

    first = start()
    s3, bucket, _ = _parts(first)
    table = first.stack.outputs["CatalogueTableName"]  # type: ignore[union-attr]
    for label, folder in (("Compost", "paper"), ("Landfill", "trash"), ("Recycling", "glass")):
        for n in range(4):
            s3.put_object(Bucket=bucket, Key=f"images/{label}/{n}.jpg", Body=_photo(folder, n))
    ddb = first.client("dynamodb")
    champion = wait_for(lambda: registry.get_champion(table_name=table, ddb=ddb), 600, "a deployed champion")
    model_id = str(champion["model_id"])
    served = wait_for(
        lambda: device_status(first).get("model_id") == model_id and device_status(first), 600, "device"
    )
    first.stop()

    second = start()  # the device's own model is the champion: kept, not deployed again
    assert device_status(second)["model_id"] == model_id
    assert device_status(second)["deployment_id"] == served["deployment_id"]
    second.stop()

    shutil.rmtree(tmp_path / "device")  # the device lost its model: the restored champion goes to it
    third = start()  # a new Greengrass v2 deployment of the champion reaches the core device
    status = wait_for(
        lambda: device_status(third).get("model_id") == model_id and device_status(third), 600, "redeployed"
    )
    assert status["deployment_id"] != served["deployment_id"], status


@pytest.mark.slow
def test_the_greengrass_v2_control_plane_survives_a_restart_and_the_next_deployment_merges(
    tmp_path: Path, started: list[LocalRuntime]
) -> None:
    from trashsorter.deploy import greengrass_v2
    from trashsorter_cli.device.server import THING_NAME
    from trashsorter_cli.local.runtime import LOCAL_THING_GROUP

    def start() -> LocalRuntime:
        runtime = LocalRuntime(port=None, stack_name="ts-e2e-gg", state_path=tmp_path / "local.json",
                               device=True, retry_delay=1)  # fmt: skip
        started.append(runtime)
        runtime.start()
        return runtime

    def result(runtime: LocalRuntime, deployment_id: str) -> str:
        rows = runtime.client("greengrassv2").list_effective_deployments(coreDeviceThingName=THING_NAME)
        row = next((r for r in rows["effectiveDeployments"] if r["deploymentId"] == deployment_id), {})
        return str(row.get("coreDeviceExecutionStatus", ""))

    def answer(response: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in response.items() if k != "ResponseMetadata"}

    def recipe(name: str) -> bytes:
        body = {"RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": "1.0.0"}
        return json.dumps(body).encode()

    first = start()
    v2 = first.client("greengrassv2")
    group = first.client("iot").describe_thing_group(thingGroupName=LOCAL_THING_GROUP)["thingGroupArn"]
    v2.create_component_version(inlineRecipe=recipe("com.example.Actuator"))
    spec = {"componentVersion": "1.0.0", "configurationUpdate": {"merge": '{"Pin": 17}'}}
    deployed = v2.create_deployment(targetArn=group, components={"com.example.Actuator": spec})
    wait_for(lambda: result(first, deployed["deploymentId"]) == "SUCCEEDED", 120, "the local core's result")
    before = (
        v2.list_components()["components"],
        answer(v2.get_deployment(deploymentId=deployed["deploymentId"])),
    )
    first.stop()

    second = start()
    v2 = second.client("greengrassv2")
    assert v2.list_components()["components"] == before[0]
    assert answer(v2.get_deployment(deploymentId=deployed["deploymentId"])) == before[1]
    assert result(second, deployed["deploymentId"]) == "SUCCEEDED"
    v2.create_component_version(inlineRecipe=recipe("com.example.Other"))
    current = greengrass_v2.current_deployment(v2, group)
    ours = {"com.example.Other": {"componentVersion": "1.0.0"}}
    merged = v2.create_deployment(
        **greengrass_v2.deployment_request(current, ours, target_arn=group, name="n")
    )
    revision = v2.get_deployment(deploymentId=merged["deploymentId"])
    assert revision["revisionId"] == "2" and revision["components"]["com.example.Actuator"] == spec
    assert set(revision["components"]) == {"com.example.Actuator", "com.example.Other"}
    wait_for(lambda: result(second, merged["deploymentId"]) == "SUCCEEDED", 120, "the merged deployment")
