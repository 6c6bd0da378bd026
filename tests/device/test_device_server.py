"""The local device as a Greengrass v2 core device, against a moto server with the local control plane: a
deployment of the published component (the model and the edge app zip in S3) reaches it through
CreateDeployment, the component runs and classifies a real photo, each result is reported per device
(ListEffectiveDeployments); bad artifacts and hostile identifiers fail the deployment and the previous model
keeps serving; the HTTP endpoints check Host, Origin and the device token."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.support.tiny_model import TinyModel
from trashsorter import aws
from trashsorter.deploy import greengrass_v2
from trashsorter_cli.device.server import THING_NAME, LocalDevice
from trashsorter_cli.local import greengrass_v2 as control_plane

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
BUCKET = "images-bucket"


@pytest.fixture
def archive(tiny_model: TinyModel) -> bytes:
    return tiny_model.result.archive().read_bytes()


GROUP = "cameras"
COMPONENT = "com.trashsorter.test.classifier"
MODEL = greengrass_v2.model_component_name(COMPONENT)


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    control_plane.install()
    control_plane.PLANE.reset()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=30).close()  # noqa: S310 - moto keeps state per process
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    aws.reset_clients()  # the device's default client now reaches the moto server
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    iot = boto3.client("iot", region_name="us-east-1")
    iot.create_thing_group(thingGroupName=GROUP)
    iot.create_thing(thingName=THING_NAME)
    iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=THING_NAME)
    yield s3
    aws.reset_clients()
    server.stop()
    control_plane.PLANE.reset()


@pytest.fixture
def device(tmp_path: Path, moto_s3: Any) -> Iterator[LocalDevice]:
    dev = LocalDevice(port=0, state_dir=tmp_path / "device", component_name=COMPONENT).start().connect(GROUP)
    yield dev
    dev.stop()


class Deployer:
    """What the package step does, with plain boto3: publish a model component version (and the app's once:
    the app does not change), deploy both to the group."""

    def __init__(self) -> None:
        self.v2 = boto3.client("greengrassv2", region_name="us-east-1")
        self.group = boto3.client("iot", region_name="us-east-1").describe_thing_group(thingGroupName=GROUP)[
            "thingGroupArn"
        ]
        self.version = 0
        app = greengrass_v2.component_recipe(
            component_name=COMPONENT,
            version="1.0.1",
            app_uri=f"s3://{BUCKET}/app/{greengrass_v2.APP_ARCHIVE}",
        )
        self.v2.create_component_version(inlineRecipe=greengrass_v2.recipe_bytes(app))

    def deploy(self, model_key: str, model_id: str = "m-1", model_version: str = "") -> dict[str, Any]:
        self.version += 1
        version = model_version or f"1.0.{self.version}"
        recipe = greengrass_v2.model_component_recipe(
            app_component_name=COMPONENT,
            version=version,
            model_id="m-0",  # the deployment's configuration update names the model (as the package step's)
            artifact_uri=f"s3://{BUCKET}/{model_key}/model.onnx.tar.gz",
        )
        self.v2.create_component_version(inlineRecipe=greengrass_v2.recipe_bytes(recipe))
        update = {"merge": json.dumps({"ModelId": model_id})}
        ours = {
            COMPONENT: {"componentVersion": "1.0.1"},
            MODEL: {"componentVersion": version, "configurationUpdate": update},
        }
        current = greengrass_v2.current_deployment(self.v2, self.group)
        request = greengrass_v2.deployment_request(current, ours, target_arn=self.group, name=model_id)
        deployment_id = str(self.v2.create_deployment(**request)["deploymentId"])
        return self.result(deployment_id)

    def result(self, deployment_id: str, timeout: float = 1800.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for row in self.v2.list_effective_deployments(coreDeviceThingName=THING_NAME)[
                "effectiveDeployments"
            ]:
                if row["deploymentId"] == deployment_id and row["coreDeviceExecutionStatus"] in (
                    "SUCCEEDED",
                    "FAILED",
                ):
                    return dict(row)
            time.sleep(0.2)
        raise AssertionError(f"the core device did not finish deployment {deployment_id}")


def call(
    url: str,
    body: bytes | dict[str, Any] | None = None,
    token: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    request = urllib.request.Request(  # noqa: S310 - the local device
        url, data=data, method="POST" if data is not None else "GET", headers=sent
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local device
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def tar_bytes(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if symlink:
            info = tarfile.TarInfo("model.onnx")
            info.type = tarfile.SYMTYPE
            info.linkname = symlink
            tar.addfile(info)
    return buffer.getvalue()


def test_deployments_reach_the_core_and_bad_ones_fail_and_roll_back(
    device: LocalDevice, moto_s3: Any, archive: bytes, tmp_path: Path
) -> None:
    token = device.token
    status, body = call(f"{device.url}/status")
    assert status == 200 and body["model_id"] is None and body["thing"] == THING_NAME
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[-1].read_bytes()
    assert call(f"{device.url}/predict", photo, token)[0] == 409  # nothing deployed yet

    moto_s3.put_object(Bucket=BUCKET, Key="models/job-1/model.onnx.tar.gz", Body=archive)
    app = greengrass_v2.write_app_archive(tmp_path / greengrass_v2.APP_ARCHIVE)
    assert app is not None
    moto_s3.upload_file(str(app), BUCKET, f"app/{greengrass_v2.APP_ARCHIVE}")
    deployer = Deployer()
    result = deployer.deploy("models/job-1")
    assert result["coreDeviceExecutionStatus"] == "SUCCEEDED", result["reason"]
    first = call(f"{device.url}/status")[1]

    status, prediction = call(f"{device.url}/predict", photo, token)
    assert status == 200, prediction
    component = call(f"{device.url}/status")[1]["component"]
    assert component["name"] == COMPONENT and component["running"] is True
    assert (device.state_dir / "nucleus" / "work" / COMPONENT / "venv").is_dir()  # its own Install
    assert prediction["label"] in {"Compost", "Recycling"} and prediction["model_id"] == "m-1"
    assert prediction["top"][0] == {"label": prediction["label"], "confidence": prediction["confidence"]}
    assert sum(t["confidence"] for t in prediction["top"]) == pytest.approx(1.0, abs=1e-5)

    # a new model: a new model component version, the same app version: the app restarts, not reinstalled
    assert deployer.deploy("models/job-1", model_id="m-2")["coreDeviceExecutionStatus"] == "SUCCEEDED"
    assert call(f"{device.url}/predict", photo, token)[1]["model_id"] == "m-2"
    log = (device.state_dir / "nucleus" / "lifecycle.log").read_text().splitlines()
    assert [line for line in log if line.startswith(COMPONENT + " ")] == [
        f"{COMPONENT} 1.0.1 Install",
        f"{COMPONENT} 1.0.1 Run",
        f"{COMPONENT} 1.0.1 Run",
    ]
    assert [line for line in log if line.startswith(MODEL)] == [
        f"{MODEL} 1.0.1 Startup",
        f"{MODEL} 1.0.2 Startup",
    ]
    # a model component the app's requirement (>=1.0.0 <2.0.0) does not accept fails the deployment
    result = deployer.deploy("models/job-1", model_id="m-3", model_version="2.0.0")
    assert result["coreDeviceExecutionStatus"] == "FAILED", result
    assert f"requires {MODEL} >=1.0.0 <2.0.0, the deployment has {MODEL} 2.0.0" in result["reason"]
    assert call(f"{device.url}/status")[1]["model_id"] == "m-2"
    first = call(f"{device.url}/status")[1]

    hostile = {
        "traversal": tar_bytes({"../escape.txt": b"x", "labels.txt": b"A\nB\n"}),
        "link": tar_bytes({"labels.txt": b"A\nB\n"}, symlink="/etc/passwd"),
        "no-onnx": tar_bytes({"image-classification-symbol.json": b"{}"}),
        "garbage": b"this is not gzip",
    }
    for key, payload in hostile.items():
        moto_s3.put_object(Bucket=BUCKET, Key=f"{key}/model.onnx.tar.gz", Body=payload)
        result = deployer.deploy(key, model_id=f"bad-{key}")
        assert result["coreDeviceExecutionStatus"] == "FAILED", (key, result)
        assert "rolled back" in result["reason"]
        assert call(f"{device.url}/status")[1]["model_id"] == "m-2"  # the previous model stays
    assert not (device.state_dir / "escape.txt").exists()
    # an identifier that is not one never reaches the component (it would have reached a shell before)
    marker = tmp_path / "pwned"
    result = deployer.deploy("models/job-1", model_id=f"x'; touch {marker}; echo '")
    assert result["coreDeviceExecutionStatus"] == "FAILED" and "not an identifier" in result["reason"]
    assert not marker.exists()
    assert call(f"{device.url}/predict", b"not an image", token)[0] == 400

    status, body = call(f"{device.url}/status")
    assert body["model_id"] == "m-2" and body["deployment_id"] == first["deployment_id"]
    assert body["labels"] == ["Compost", "Recycling"] and body["deployed_at"]
    assert call(f"{device.url}/predict", photo, token)[1]["label"] == prediction["label"]

    # a restarted device comes back with the deployed model
    device.stop()
    again = LocalDevice(port=0, state_dir=device.state_dir, component_name=COMPONENT).start()
    try:
        assert call(f"{again.url}/status")[1]["model_id"] == "m-2"
        deadline = time.monotonic() + 900  # the component starts again (its Install checks the pins)
        while not (call(f"{again.url}/status")[1]["component"] or {}).get("running"):
            assert time.monotonic() < deadline, "the restarted component did not run"
            time.sleep(1)
        assert call(f"{again.url}/predict", photo, again.token)[1]["label"] == prediction["label"]
    finally:
        again.stop()


def test_the_http_endpoints_check_host_origin_and_token(device: LocalDevice) -> None:
    """No deployment endpoint at all (deployments come from the control plane); a web page cannot write to
    the device (Origin), a rebound DNS name cannot read it (Host), and control routes need the token."""
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[-1].read_bytes()
    assert (
        call(f"{device.url}/deployments", {"model_id": "m", "artifact_uri": "s3://b/k"}, device.token)[0]
        == 404
    )
    assert call(f"{device.url}/predict", photo)[0] == 401
    assert call(f"{device.url}/predict", photo, "wrong-token")[0] == 401
    assert call(f"{device.url}/iot/messages")[0] == 401
    assert call(f"{device.url}/iot/messages", token=device.token)[0] == 200
    evil = {"Origin": "http://evil.example"}
    assert call(f"{device.url}/predict", photo, device.token, evil)[0] == 403
    assert call(f"{device.url}/status", headers={"Host": "attacker.example:80"})[0] == 403
    assert call(f"{device.url}/status", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert call(f"{device.url}/status", headers={"Origin": device.url})[0] == 200
    token_file = device.state_dir / "token"
    assert token_file.read_text().strip() == device.token and token_file.stat().st_mode & 0o077 == 0


def test_a_device_stopped_while_its_venv_is_made_stops_pip_and_leaves_no_half_venv(tmp_path: Path) -> None:
    device = LocalDevice(port=0, state_dir=tmp_path / "device", component_name=COMPONENT).start()
    preparation = device._preparing
    assert preparation is not None
    venv = preparation.work_path / "venv"
    deadline = time.monotonic() + 60
    while not venv.is_dir():  # `python -m venv` has begun writing it
        assert time.monotonic() < deadline, "the venv preparation did not start"
        time.sleep(0.05)
    process = preparation._process
    assert process is not None and process.poll() is None
    device.stop()
    assert process.poll() is not None, "pip was left running"
    assert not venv.exists(), "a half-made venv was left behind"
    # the next start prepares it again (and stops it again)
    again = LocalDevice(port=0, state_dir=tmp_path / "device", component_name=COMPONENT).start()
    try:
        assert again._preparing is not None
    finally:
        again.stop()
