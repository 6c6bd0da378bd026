"""A model is proven before it is registered: the package step loads the packaged ONNX model with the
device's own loader and runs it on a fixed image; a model that fails is never uploaded, promoted or
deployed, and the run fails with the reason. Real onnxruntime on real (tiny) graphs."""

from __future__ import annotations

import pytest

from tests.support.fixtures.model_artifacts import CORRUPT_ONNX, onnx_model_tar, tiny_onnx
from tests.support.pack import JOB, Pack, handle
from trashsorter import registry
from trashsorter.schema import LOCK_KEY, run_key

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("graph", "reason"),
    [
        (CORRUPT_ONNX, "the device cannot load the model: onnxruntime cannot load"),
        (tiny_onnx(4), "model has 4 outputs but labels.txt lists 3 labels"),
        (tiny_onnx(3, layout="NHWC"), "['N', 224, 224, 3]; the device feeds float32 [N, 3, S, S]"),
    ],
    ids=["corrupt-graph", "labels-mismatch", "wrong-input-layout"],
)
def test_a_model_the_device_cannot_run_fails_the_run_and_ships_nothing(
    pack: Pack, graph: bytes, reason: str
) -> None:
    run_id = pack.start_run(JOB, artifact=onnx_model_tar(accuracy=0.95, model=graph))

    outcome = handle(pack.event("training_completed.json", JOB), pack.settings(), ddb=pack.ddb, s3=pack.s3,
                     greengrass=pack.gg)  # fmt: skip

    assert outcome.outcome == "failed" and reason in outcome.reason, outcome.reason
    run = pack.get(run_key(run_id))
    assert run["status"] == "failed" and reason in run["status_message"]
    assert "holder" not in pack.get(LOCK_KEY)
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["status"] == "rejected" and reason in model["packaging_error"]
    assert registry.get_champion(table_name=pack.table, ddb=pack.ddb) is None
    assert "Contents" not in pack.s3.list_objects_v2(Bucket=pack.deeplens_bucket)  # nothing uploaded
    assert pack.deployments() == []


def test_a_sound_model_is_registered_with_what_was_proven(pack: Pack) -> None:
    pack.start_run(JOB, artifact=onnx_model_tar(accuracy=0.95))

    outcome = handle(pack.event("training_completed.json", JOB, accuracy=0.95), pack.settings(), ddb=pack.ddb,
                     s3=pack.s3, greengrass=pack.gg)  # fmt: skip

    assert outcome.outcome in ("deployed", "registered"), outcome.reason
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["status"] == "champion"
    proof = model["proof"]
    assert proof["labels"] == ["Compost", "Landfill", "Recycling"]
    assert proof["input_shape"] == ["N", 3, 224, 224]
    assert proof["fixed_image_label"] in proof["labels"] and 0 < float(proof["seconds"]) < 60
