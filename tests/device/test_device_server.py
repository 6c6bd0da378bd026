"""The local device against a moto server: deploy from S3 (the model and the edge component's app zip beside
it), predict a real photo THROUGH the running Greengrass v2 component, refuse bad artifacts while keeping the
previous model."""

from __future__ import annotations

import io
import json
import tarfile
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
from trashsorter_cli.device.server import LocalDevice

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
BUCKET = "images-bucket"


@pytest.fixture
def archive(tiny_model: TinyModel) -> bytes:
    return tiny_model.result.archive.read_bytes()


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    aws.reset_clients()  # the device's default client now reaches the moto server
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    yield s3
    aws.reset_clients()
    server.stop()


@pytest.fixture
def device(tmp_path: Path, moto_s3: Any) -> Iterator[LocalDevice]:
    dev = LocalDevice(port=0, state_dir=tmp_path / "device").start()
    yield dev
    dev.stop()


def call(url: str, body: bytes | dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")  # noqa: S310
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


def test_deploy_predict_and_refuse_bad_artifacts(
    device: LocalDevice, moto_s3: Any, archive: bytes, tmp_path: Path
) -> None:
    status, body = call(f"{device.url}/status")
    assert status == 200 and body["model_id"] is None
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[-1].read_bytes()
    assert call(f"{device.url}/predict", photo)[0] == 409  # nothing deployed yet

    moto_s3.put_object(Bucket=BUCKET, Key="models/job-1/model.onnx.tar.gz", Body=archive)
    app = greengrass_v2.write_app_archive(tmp_path / greengrass_v2.APP_ARCHIVE)
    assert app is not None
    moto_s3.upload_file(str(app), BUCKET, f"models/job-1/{greengrass_v2.APP_ARCHIVE}")
    status, body = call(
        f"{device.url}/deployments",
        {
            "model_id": "m-1",
            "artifact_uri": f"s3://{BUCKET}/models/job-1/model.onnx.tar.gz",
            "deployment_id": "d-1",
        },
    )
    assert status == 200, body
    assert body["status"] == "deployed" and body["model_id"] == "m-1"

    status, prediction = call(f"{device.url}/predict", photo)
    assert status == 200, prediction
    component = call(f"{device.url}/status")[1]["component"]
    assert component["name"] == "com.trashsorter.local-device" and component["running"] is True
    assert (device.state_dir / "nucleus" / "work" / component["name"] / "venv").is_dir()  # its own Install
    assert prediction["label"] in {"Compost", "Recycling"}
    assert prediction["top"][0] == {"label": prediction["label"], "confidence": prediction["confidence"]}
    assert sum(t["confidence"] for t in prediction["top"]) == pytest.approx(1.0, abs=1e-5)

    hostile = {
        "traversal.tar.gz": tar_bytes({"../escape.txt": b"x", "labels.txt": b"A\nB\n"}),
        "link.tar.gz": tar_bytes({"labels.txt": b"A\nB\n"}, symlink="/etc/passwd"),
        "no-onnx.tar.gz": tar_bytes({"image-classification-symbol.json": b"{}"}),
        "garbage.tar.gz": b"this is not gzip",
    }
    for key, payload in hostile.items():
        moto_s3.put_object(Bucket=BUCKET, Key=key, Body=payload)
        status, body = call(
            f"{device.url}/deployments", {"model_id": f"bad-{key}", "artifact_uri": f"s3://{BUCKET}/{key}"}
        )
        assert status == 422, (key, body)
        assert body["status"] == "failed" and body["error"]
        assert body["model_id"] == "m-1"  # the previous model stays
    status, body = call(
        f"{device.url}/deployments", {"model_id": "gone", "artifact_uri": f"s3://{BUCKET}/missing.tar.gz"}
    )
    assert status == 502 and "cannot download" in body["error"]
    assert not (device.state_dir / "escape.txt").exists()
    assert call(f"{device.url}/deployments", {"artifact_uri": "s3://x/y"})[0] == 400
    assert call(f"{device.url}/predict", b"not an image")[0] == 400

    status, body = call(f"{device.url}/status")
    assert body["model_id"] == "m-1" and body["deployment_id"] == "d-1"
    assert body["labels"] == ["Compost", "Recycling"] and body["deployed_at"]
    assert call(f"{device.url}/predict", photo)[1]["label"] == prediction["label"]

    # a restarted device comes back with the deployed model
    device.stop()
    again = LocalDevice(port=0, state_dir=device.state_dir).start()
    try:
        assert call(f"{again.url}/status")[1]["model_id"] == "m-1"
        assert call(f"{again.url}/predict", photo)[1]["label"] == prediction["label"]
    finally:
        again.stop()
