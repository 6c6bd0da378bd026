"""The trainer's report.html reaches people (moto): the package step copies it out of the job's
model.tar.gz (through the checked tar reading, with a size limit) beside the packaged model in the DeepLens
bucket, records its URI on the model record, and the "registered"/"deployed"/"gated out" notice names it.
The built-in algorithm writes no report: no URI, no line in the notice."""

from __future__ import annotations

import json

import pytest

from tests.support.fixtures.model_artifacts import mxnet_model_tar, onnx_model_tar
from tests.support.pack import JOB, Pack, handle
from trashsorter import artifacts, registry

pytestmark = pytest.mark.integration

REPORT = b"<!doctype html><html><body><h1>trashsorter training report</h1><table></table></body></html>"


def _complete(pack: Pack, artifact: bytes, *, accuracy: float) -> dict[str, object]:
    pack.start_run(JOB, backend="local", artifact=artifact)
    event = pack.event("training_completed.json", JOB, accuracy=accuracy)
    handle(event, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None
    return model


def _notice(pack: Pack) -> tuple[str, dict[str, object]]:
    """The notice's text and its details (the JSON block after the text)."""
    (notice,) = pack.notices_received()
    text, _, details = str(notice["body"]).partition("\n\n{")
    return text, dict(json.loads("{" + details))


def test_report_is_copied_beside_the_model_recorded_and_named_in_the_notice(pack: Pack) -> None:
    model = _complete(pack, onnx_model_tar(accuracy=0.9125, report=REPORT), accuracy=0.9125)
    key = f"models/{JOB}/report.html"
    uri = f"s3://{pack.deeplens_bucket}/{key}"
    stored = pack.s3.get_object(Bucket=pack.deeplens_bucket, Key=key)
    assert stored["Body"].read() == REPORT
    assert stored["ContentType"].startswith("text/html")
    assert stored["Metadata"]["model-id"] == JOB
    assert model["report_uri"] == uri
    assert model["status"] == "champion"
    assert "report" not in model["packaged_artifact_uris"]  # not a deployable artifact
    text, details = _notice(pack)
    assert f"Report: {uri}" in text
    assert details["report"] == uri


def test_a_gated_out_model_keeps_its_report_and_the_notice_names_it(pack: Pack) -> None:
    model = _complete(pack, onnx_model_tar(accuracy=0.4, report=REPORT), accuracy=0.4)
    uri = f"s3://{pack.deeplens_bucket}/models/{JOB}/report.html"
    assert model["status"] == "rejected" and model["report_uri"] == uri
    text, details = _notice(pack)
    assert "was not deployed" in text and f"Report: {uri}" in text
    assert details["report"] == uri


def test_an_oversized_report_is_refused_like_any_oversized_member(
    pack: Pack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts, "MAX_REPORT_BYTES", len(REPORT) - 1)
    model = _complete(pack, onnx_model_tar(report=REPORT), accuracy=0.9)
    assert "report.html" in str(model["packaging_error"]) and "larger than" in str(model["packaging_error"])
    assert "Contents" not in pack.s3.list_objects_v2(
        Bucket=pack.deeplens_bucket, Prefix=f"models/{JOB}/report"
    )


def test_the_built_in_algorithm_has_no_report(pack: Pack) -> None:
    model = _complete(pack, mxnet_model_tar(), accuracy=0.9)
    assert "report_uri" not in model
    text, details = _notice(pack)
    assert "Report:" not in text and "report" not in details
