"""Generate the container image tables from the SageMaker SDK's image-URI config.

``trashsorter/data/image_classification_uris.json`` (the built-in algorithm, recipe path) and
``trashsorter/data/pytorch_training_uris.json`` (the PyTorch training Deep Learning Container that runs the
project's trainer in script mode: the newest framework version of the config, GPU, its Python).

The SDK is never imported (and never shipped in a Lambda): the script fetches the SDK's wheel with
``pip download`` (or takes ``--wheel``/``--config`` paths), reads
``image_uri_config/image-classification.json`` and ``image_uri_config/pytorch.json`` straight out of the
zip, resolves each region's ECR domain from botocore's partition data, and writes

    {"source": ..., "repository": "image-classification", "tag": "1",
     "regions": {"<region>": {"account": "<registry account>",
                              "uri": "<account>.dkr.ecr.<region>.<domain>/image-classification:1"}}}

Usage::

    .venv/bin/python scripts/generate_algorithm_images.py            # pip download sagemaker-core
    .venv/bin/python scripts/generate_algorithm_images.py --wheel sagemaker_core-2.27.0-py3-none-any.whl
    .venv/bin/python scripts/generate_algorithm_images.py --check    # fail if a committed file is stale
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import botocore.loaders

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "layers/trashsorter/python/trashsorter/data/image_classification_uris.json"
CONFIG_SUFFIX = "image_uri_config/image-classification.json"
PYTORCH_TARGET = ROOT / "layers/trashsorter/python/trashsorter/data/pytorch_training_uris.json"
PYTORCH_SUFFIX = "image_uri_config/pytorch.json"
PYTORCH_PROCESSOR = "gpu"
# sagemaker>=3 is a meta package; the image-URI configs live in sagemaker-core (2.x had them inline).
DEFAULT_REQUIREMENT = "sagemaker-core"
VERSION = "1"


def download_wheel(requirement: str, dest: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    subprocess.run(
        [*pip, "-d", str(dest), requirement],
        check=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {requirement} produced no wheel")
    return wheels[-1]


def read_config_from_wheel(wheel: Path, suffix: str = CONFIG_SUFFIX) -> tuple[dict[str, Any], str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(suffix)]
        if not names:
            raise SystemExit(f"{wheel.name} has no {suffix}")
        return json.loads(archive.read(names[0])), f"{wheel.name}:{names[0]}"


def dns_suffix(region: str, partitions: list[dict[str, Any]]) -> str:
    for partition in partitions:
        if region in partition.get("regions", {}):
            return str(partition["dnsSuffix"])
    for partition in partitions:
        if re.match(partition["regionRegex"], region):
            return str(partition["dnsSuffix"])
    raise SystemExit(f"no botocore partition matches region {region}")


def regions_table(registries: dict[str, str], repository: str, tag: str) -> dict[str, Any]:
    partitions = botocore.loaders.Loader().load_data("endpoints")["partitions"]
    return {
        region: {
            "account": account,
            "uri": f"{account}.dkr.ecr.{region}.{dns_suffix(region, partitions)}/{repository}:{tag}",
        }
        for region, account in sorted(registries.items())
    }


def build(config: dict[str, Any], source: str) -> dict[str, Any]:
    version = config["versions"][VERSION]
    repository = version["repository"]
    regions = regions_table(version["registries"], repository, VERSION)
    return {"source": source, "repository": repository, "tag": VERSION, "regions": regions}


def build_pytorch(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The newest PyTorch training image (GPU), tagged ``<version>-gpu-<py>`` as the SDK forms it."""
    training = config["training"]
    newest = max(training["versions"], key=lambda v: tuple(int(part) for part in v.split(".")))
    version = training["versions"][newest]
    py_version = sorted(version["py_versions"])[-1]
    tag = f"{newest}-{PYTORCH_PROCESSOR}-{py_version}"
    return {
        "source": source,
        "repository": version["repository"],
        "framework_version": newest,
        "py_version": py_version,
        "processor": PYTORCH_PROCESSOR,
        "tag": tag,
        "regions": regions_table(version["registries"], version["repository"], tag),
    }


def emit(table: dict[str, Any], output: Path, check: bool) -> int:
    text = json.dumps(table, indent=2, sort_keys=True) + "\n"
    if check:
        current = json.loads(output.read_text()) if output.exists() else {}
        if current.get("regions") != table["regions"]:
            print(f"{output} is stale; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{output} is up to date")
        return 0
    output.write_text(text)
    print(f"wrote {output} ({len(table['regions'])} regions from {table['source']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded sagemaker / sagemaker-core wheel")
    parser.add_argument("--config", type=Path, help="an image-classification.json file instead of a wheel")
    parser.add_argument("--requirement", default=DEFAULT_REQUIREMENT, help="what to pip download")
    parser.add_argument("--output", type=Path, default=TARGET)
    parser.add_argument("--pytorch-config", type=Path, help="a pytorch.json file instead of a wheel")
    parser.add_argument("--pytorch-output", type=Path, default=PYTORCH_TARGET)
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if not (args.config and args.pytorch_config) and wheel is None:
            wheel = download_wheel(args.requirement, Path(tmp))
        if args.config:
            config, source = json.loads(args.config.read_text()), args.config.name
        else:
            config, source = read_config_from_wheel(wheel)
        if args.pytorch_config:
            pytorch, pytorch_source = json.loads(args.pytorch_config.read_text()), args.pytorch_config.name
        else:
            pytorch, pytorch_source = read_config_from_wheel(wheel, PYTORCH_SUFFIX)
    status = emit(build(config, source), args.output, args.check)
    return emit(build_pytorch(pytorch, pytorch_source), args.pytorch_output, args.check) or status


if __name__ == "__main__":
    raise SystemExit(main())
