"""What the Lambda layer ships (layers/trashsorter/python/requirements.txt, built by ``sam build``)."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_the_model_proof_layer_pins_the_devices_runtime_and_only_the_package_function_gets_it() -> None:
    """OnnxRuntimeLayer (trashsorter.model_proof) runs the device's loader: the device's exact versions (the
    pins a device with the Lambda runtime's Python, 3.11 or newer, installs)."""
    from trashsorter_cli.local.template import load_template

    def pins(path: Path) -> dict[str, str]:
        found = re.findall(
            r'^([a-z0-9_-]+)==([^\s;]+)(?:; python_version >= "3.11")?$', path.read_text(), flags=re.MULTILINE
        )
        return {name: version for name, version in found}

    root = Path(__file__).resolve().parents[2]
    layer = pins(root / "layers/onnxruntime/requirements.txt")
    device = pins(root / "edge/trashsorter_edge/requirements.txt")
    assert set(layer) == {"numpy", "onnxruntime"} and all(device[name] == layer[name] for name in layer)
    resources = load_template()["Resources"]
    with_layer = [lid for lid, res in resources.items() if {"Ref": "OnnxRuntimeLayer"} in
                  (res.get("Properties", {}).get("Layers") or [])]  # fmt: skip
    assert with_layer == ["PackageFunction"]
