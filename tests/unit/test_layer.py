"""What the Lambda layer ships (layers/trashsorter/python/requirements.txt, built by ``sam build``)."""

from __future__ import annotations

from benchmarks.bench_cold_start import layer_distributions


def _closure() -> set[str]:
    return {str(dist.metadata["Name"]).lower().replace("_", "-") for dist in layer_distributions()}


def test_a_layer_that_ships_botocore_ships_boto3_and_s3transfer_with_it() -> None:
    """/opt/python precedes the runtime's packages: a layer botocore under the runtime's boto3 would pair
    versions that were never released together."""
    names = _closure()
    assert "botocore" in names  # pulled in by aws-xray-sdk (Powertools' tracer extra)
    assert {"boto3", "s3transfer"} <= names, sorted(names)


def test_the_layer_has_no_heavy_libraries_the_lambdas_must_not_carry() -> None:
    names = _closure()
    assert not names & {"numpy", "torch", "pandas", "sagemaker", "onnxruntime"}, sorted(names)
