"""Container image URIs per region: data tables generated from the SageMaker SDK's image-URI config by
``scripts/generate_algorithm_images.py`` (no SDK in a Lambda)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from trashsorter.errors import ConfigurationError

IMAGE_CLASSIFICATION = "image_classification_uris.json"  # the recipe's built-in algorithm
PYTORCH_TRAINING = "pytorch_training_uris.json"  # the PyTorch training Deep Learning Container


@lru_cache(maxsize=4)
def image_table(name: str) -> dict[str, Any]:
    text = resources.files("trashsorter").joinpath(f"data/{name}").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def image_uri(table: str, region: str, override: str = "", *, what: str, setting: str) -> str:
    """The image of ``region`` from ``table``; ``override`` (the ``setting`` variable) wins."""
    if override:
        return override
    regions = image_table(table)["regions"]
    if region not in regions:
        raise ConfigurationError(
            f"no SageMaker {what} image is known for region {region!r}; set {setting} or regenerate "
            f"data/{table} (scripts/generate_algorithm_images.py)"
        )
    return str(regions[region]["uri"])
