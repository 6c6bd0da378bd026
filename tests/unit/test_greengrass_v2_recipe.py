"""The Greengrass v2 recipe files: least privilege, an isolated pinned install, every configuration key used
by the lifecycle defined, the package step's values filled in, and the model as its own component the app
depends on (no Greengrass API involved)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from trashsorter.deploy import greengrass_v2
from trashsorter_edge.app import LOCAL_SORT_TOPIC

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "layers/trashsorter/python/trashsorter/data/greengrass_v2_recipe.json"


def filled() -> dict:  # type: ignore[type-arg]
    return greengrass_v2.component_recipe(
        component_name="com.example.edge",
        version="1.0.7",
        app_uri="s3://b/models/job-1/trashsorter-edge.zip",
        defaults={"Threshold": 0.8, "Inbox": {"Bucket": "images-b"}},
    )


def model_recipe(model_id: str = "job-1") -> dict:  # type: ignore[type-arg]
    return greengrass_v2.model_component_recipe(
        app_component_name="com.example.edge",
        version="1.0.12",
        model_id=model_id,
        artifact_uri="s3://b/models/job-1/model.onnx.tar.gz",
    )


def test_the_recipe_is_the_file_in_the_repo_with_the_package_values_filled_in() -> None:
    on_disk = json.loads(RECIPE.read_text())
    recipe = filled()
    assert recipe["ComponentName"] == "com.example.edge" and recipe["ComponentVersion"] == "1.0.7"
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert "ModelId" not in config and config["Threshold"] == 0.8  # the model's id is the model component's
    assert config["Inbox"] == {"Bucket": "images-b", "MaxQueue": 50, "PerMinute": 6}  # merged, not replaced
    assert recipe["ComponentDependencies"]["aws.greengrass.TokenExchangeService"]["DependencyType"] == "HARD"
    lifecycle = json.dumps(on_disk["Manifests"][0]["Lifecycle"]).replace(
        "MODEL_COMPONENT", "com.example.edgeModel"
    )
    assert recipe["Manifests"][0]["Lifecycle"] == json.loads(lifecycle)
    assert recipe["Manifests"][0]["Artifacts"] == [
        {"URI": "s3://b/models/job-1/trashsorter-edge.zip", "Unarchive": "ZIP"},
    ]


def test_the_model_is_its_own_component_the_app_depends_on_and_reads() -> None:
    app, model = filled(), model_recipe()
    assert model["ComponentName"] == greengrass_v2.model_component_name("com.example.edge")
    assert model["ComponentName"] == "com.example.edgeModel" and model["ComponentVersion"] == "1.0.12"
    assert model["ComponentConfiguration"]["DefaultConfiguration"] == {"ModelId": "job-1"}
    # the app's HARD dependency: any 1.x model component (a new model restarts the app, no reinstall)
    assert app["ComponentDependencies"]["com.example.edgeModel"] == {
        "VersionRequirement": ">=1.0.0 <2.0.0",
        "DependencyType": "HARD",
    }
    lifecycle = app["Manifests"][0]["Lifecycle"]
    assert lifecycle["Install"]["Script"].endswith(
        "launch.py install {work:path} {com.example.edgeModel:artifacts:path}"
    )
    assert lifecycle["Run"]["Script"].endswith(
        "launch.py run {work:path} {com.example.edgeModel:artifacts:path}"
    )
    assert lifecycle["Setenv"]["TRASHSORTER_CFG_ModelId"] == "{com.example.edgeModel:configuration:/ModelId}"
    # the model's artifact is readable by the app (a dependency's artifacts need Read ALL), never unpacked
    (manifest,) = model["Manifests"]
    assert manifest["Platform"] == {"os": "linux"}
    assert manifest["Artifacts"] == [
        {
            "URI": "s3://b/models/job-1/model.onnx.tar.gz",
            "Unarchive": "NONE",
            "Permission": {"Read": "ALL", "Execute": "NONE"},
        }
    ]
    # Startup (dependents start only once it exits 0), not Run: a model that fails it fails the deployment
    assert set(manifest["Lifecycle"]) == {"Startup"}
    script = manifest["Lifecycle"]["Startup"]["Script"]
    assert script.startswith("python3 -c '") and script.endswith("' {artifacts:path}/model.onnx.tar.gz")
    assert set(re.findall(r"\{([^}]*)\}", script)) == {"artifacts:path"}  # no other recipe variable
    assert manifest["Lifecycle"]["Startup"]["RequiresPrivilege"] is False
    assert not hasattr(greengrass_v2, "CLASSIFIER_SCRIPT")


def test_ipc_access_is_publish_only_to_its_own_topics_without_recipe_variables() -> None:
    config = filled()["ComponentConfiguration"]["DefaultConfiguration"]
    policies = list(config["accessControl"]["aws.greengrass.ipc.mqttproxy"].values())
    assert policies and all(p["operations"] == ["aws.greengrass#PublishToIoTCore"] for p in policies)
    resources = [r for p in policies for r in p["resources"]]
    # a default core does not interpolate recipe variables in the configuration: one level per thing instead
    assert not any("{" in r or "*" in r or "#" in r for r in resources)
    own = {t.replace("<thing>", "+") for t in config["Topics"].values()}
    assert set(resources) == own
    # local pub/sub: publish the sort command to one fixed topic, nothing else
    local = list(config["accessControl"]["aws.greengrass.ipc.pubsub"].values())
    assert [(p["operations"], p["resources"]) for p in local] == [
        (["aws.greengrass#PublishToTopic"], [LOCAL_SORT_TOPIC])
    ]
    assert set(config["accessControl"]) == {"aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.pubsub"}
    # policy ids are unique per core: each carries the component's own name
    assert list(config["accessControl"]["aws.greengrass.ipc.mqttproxy"]) == [
        "com.example.edge:mqttproxy:publish"
    ]
    assert list(config["accessControl"]["aws.greengrass.ipc.pubsub"]) == ["com.example.edge:pubsub:sort"]


def test_no_configuration_value_reaches_a_lifecycle_script() -> None:
    """Scripts run through a shell: only the nucleus's own paths are interpolated into them; configuration
    values reach the lifecycle as environment variables (``Setenv``), which no shell parses."""
    lifecycle = filled()["Manifests"][0]["Lifecycle"]
    for name, step in lifecycle.items():
        if name == "Setenv":
            continue
        variables = set(re.findall(r"\{([a-zA-Z.]+:[^}]*)\}", step["Script"]))
        paths = {"artifacts:decompressedPath", "work:path", "com.example.edgeModel:artifacts:path"}
        assert variables <= paths, (name, variables)
    setenv = lifecycle["Setenv"]
    config = filled()["ComponentConfiguration"]["DefaultConfiguration"]
    keys = {k for k in config if k != "accessControl"}
    assert {f"TRASHSORTER_CFG_{k}" for k in keys} <= set(setenv)


def test_install_is_isolated_and_pinned_and_nothing_runs_as_root() -> None:
    lifecycle = filled()["Manifests"][0]["Lifecycle"]
    assert {"Install", "Run", "Shutdown"} <= set(lifecycle)
    assert all(
        step.get("RequiresPrivilege") is False
        for step in lifecycle.values()
        if isinstance(step, dict) and "Script" in step
    )
    install, run = lifecycle["Install"]["Script"], lifecycle["Run"]["Script"]
    assert "launch.py install {work:path}" in install and "--user" not in install and "sudo" not in install
    assert run == (
        "exec python3 {artifacts:decompressedPath}/trashsorter-edge/launch.py run {work:path} "
        "{com.example.edgeModel:artifacts:path}"
    )
    launcher = (ROOT / "layers/trashsorter/python/trashsorter/data/greengrass_launch.py").read_text()
    assert 'work / "venv" / "bin" / "python"' in launcher and "shell=True" not in launcher
    for name in ("requirements.txt", "requirements-greengrass.txt"):
        lines = [
            ln
            for ln in (ROOT / "edge/trashsorter_edge" / name).read_text().splitlines()
            if ln and not ln.startswith("#")
        ]
        pin = r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*"
        marker = r'; python_version (<|==|>=) "3\.[0-9]+"'  # one pin per Python version where needed
        assert lines and all(re.fullmatch(f"{pin}({marker})?", ln) for ln in lines), lines


def test_every_configuration_key_the_lifecycle_reads_has_a_default() -> None:
    recipe = filled()
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    used = set(re.findall(r"\{configuration:(/[^}]+)\}", json.dumps(recipe["Manifests"])))
    assert {"/Source", "/Threshold", "/Topics", "/Output", "/Inbox"} <= used
    for pointer in used:
        node = config
        for part in pointer.strip("/").split("/"):
            node = node[part]


def test_app_archive_holds_the_edge_package_and_is_reproducible(tmp_path: Path) -> None:
    first = greengrass_v2.write_app_archive(tmp_path / "a.zip")
    second = greengrass_v2.write_app_archive(tmp_path / "b.zip")
    assert first and second and first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    shipped = {f"trashsorter_edge/{p.name}" for p in (ROOT / "edge/trashsorter_edge").glob("*.py")}
    assert shipped <= set(names) and "trashsorter_edge/requirements.txt" in names
    assert "launch.py" in names  # the lifecycle steps, at the archive's root


def test_manifests_per_64_bit_platform_and_32_bit_arm_refused_with_the_reason() -> None:
    import subprocess

    from trashsorter_cli.device.runner import RecipeError, select_manifest

    recipe = filled()
    platforms = [m["Platform"] for m in recipe["Manifests"]]
    assert platforms == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "aarch64"},
        {"os": "linux", "architecture": "arm"},
    ]
    assert recipe["Manifests"][0]["Lifecycle"] == recipe["Manifests"][1]["Lifecycle"]
    assert recipe["Manifests"][0]["Artifacts"] == recipe["Manifests"][1]["Artifacts"]
    assert select_manifest(recipe, "x86_64")["Platform"]["architecture"] == "amd64"
    assert select_manifest(recipe, "aarch64")["Platform"]["architecture"] == "aarch64"
    arm = select_manifest(recipe, "armv7l")
    assert arm["Artifacts"] == [] and set(arm["Lifecycle"]) == {"Install"}
    done = subprocess.run(["sh", "-c", arm["Lifecycle"]["Install"]["Script"]], capture_output=True, text=True)
    assert done.returncode == 1 and "64-bit" in done.stderr and "32-bit ARM" in done.stderr
    with pytest.raises(RecipeError, match="no manifest for linux/x86"):
        select_manifest(recipe, "i686")


def test_a_model_id_that_is_not_an_identifier_never_enters_a_recipe() -> None:
    from trashsorter.errors import DeploymentError

    for bad in ("x'; id > /tmp/p; '", "a b", "$(id)", "", "-leading", "x" * 200):
        with pytest.raises(DeploymentError, match="not an identifier"):
            model_recipe(bad)
    assert greengrass_v2.checked_identifier("deeplens-3f2a-20261207T0102-ab12", "model id")


def test_the_model_components_startup_check_refuses_what_the_app_could_not_use(tmp_path: Path) -> None:
    import subprocess

    from tests.support.fixtures.model_artifacts import CORRUPT_ONNX, tar_bytes, tiny_onnx

    def check(members: dict[str, bytes]) -> subprocess.CompletedProcess[str]:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / greengrass_v2.MODEL_ARCHIVE).write_bytes(tar_bytes(members.items()))
        script = greengrass_v2.model_check_script().replace("{artifacts:path}", str(folder))
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)

    good = check({"model.onnx": tiny_onnx(2), "labels.txt": b"Compost\nRecycling\n"})
    assert good.returncode == 0 and good.stdout.startswith("model checked: 2 labels"), good.stderr
    refused = {
        "model.onnx is not an ONNX model": {"model.onnx": CORRUPT_ONNX, "labels.txt": b"A\n"},
        "labels.txt names no label": {"model.onnx": tiny_onnx(2), "labels.txt": b"\n"},
        "no model.onnx and labels.txt": {"image-classification-symbol.json": b"{}"},
    }
    for why, members in refused.items():
        done = check(members)
        assert done.returncode == 1 and why in done.stderr, (why, done.stderr)
