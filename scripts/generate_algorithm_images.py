"""Generate ``trashsorter/data/image_classification_uris.json`` from the SageMaker SDK's image-URI config.

The SDK is never imported (and never shipped in a Lambda): the script fetches the SDK's wheel with
``pip download`` (or takes ``--wheel``/``--config`` paths), reads
``image_uri_config/image-classification.json`` straight out of the zip, resolves each region's ECR
domain from botocore's partition data, and writes

    {"source": ..., "repository": "image-classification", "tag": "1",
     "regions": {"<region>": {"account": "<registry account>",
                              "uri": "<account>.dkr.ecr.<region>.<domain>/image-classification:1"}}}

Usage::

    .venv/bin/python scripts/generate_algorithm_images.py            # pip download sagemaker-core
    .venv/bin/python scripts/generate_algorithm_images.py --wheel sagemaker_core-2.27.0-py3-none-any.whl
    .venv/bin/python scripts/generate_algorithm_images.py --check    # fail if the committed file is stale
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


def read_config_from_wheel(wheel: Path) -> tuple[dict[str, Any], str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(CONFIG_SUFFIX)]
        if not names:
            raise SystemExit(f"{wheel.name} has no {CONFIG_SUFFIX}")
        return json.loads(archive.read(names[0])), f"{wheel.name}:{names[0]}"


def dns_suffix(region: str, partitions: list[dict[str, Any]]) -> str:
    for partition in partitions:
        if region in partition.get("regions", {}):
            return str(partition["dnsSuffix"])
    for partition in partitions:
        if re.match(partition["regionRegex"], region):
            return str(partition["dnsSuffix"])
    raise SystemExit(f"no botocore partition matches region {region}")


def build(config: dict[str, Any], source: str) -> dict[str, Any]:
    version = config["versions"][VERSION]
    repository = version["repository"]
    partitions = botocore.loaders.Loader().load_data("endpoints")["partitions"]
    regions = {
        region: {
            "account": account,
            "uri": f"{account}.dkr.ecr.{region}.{dns_suffix(region, partitions)}/{repository}:{VERSION}",
        }
        for region, account in sorted(version["registries"].items())
    }
    return {"source": source, "repository": repository, "tag": VERSION, "regions": regions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded sagemaker / sagemaker-core wheel")
    parser.add_argument("--config", type=Path, help="an image-classification.json file instead of a wheel")
    parser.add_argument("--requirement", default=DEFAULT_REQUIREMENT, help="what to pip download")
    parser.add_argument("--output", type=Path, default=TARGET)
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing")
    args = parser.parse_args(argv)

    if args.config:
        config, source = json.loads(args.config.read_text()), args.config.name
    elif args.wheel:
        config, source = read_config_from_wheel(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            config, source = read_config_from_wheel(download_wheel(args.requirement, Path(tmp)))
    text = json.dumps(build(config, source), indent=2, sort_keys=True) + "\n"
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if json.loads(current or "{}").get("regions") != json.loads(text)["regions"]:
            print(f"{args.output} is stale; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(json.loads(text)['regions'])} regions from {source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
