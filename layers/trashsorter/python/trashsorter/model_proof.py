"""A model is proven before it is registered: the packaged ONNX model loaded and run as the device runs it.

:func:`prove_onnx_package` takes the ``model.onnx.tar.gz`` the package step is about to upload (exactly
what the device will receive), unpacks ``model.onnx`` and ``labels.txt`` and hands them to the device's
own loader (:class:`trashsorter_edge.model.Model`: onnxruntime on the CPU, THE preprocessing), then checks
the graph contract the device relies on and runs it once on a fixed image:

* the graph loads (a corrupt graph fails here);
* one float32 input of layout ``[N, 3, S, S]`` (NCHW RGB, what the preprocessing feeds);
* the output's last dimension = the number of labels in ``labels.txt``;
* one inference on :func:`fixed_image` gives one row of ``len(labels)`` finite probabilities summing to 1,
  within :data:`PROOF_SECONDS`.

Any failure is a :class:`~trashsorter.errors.PackagingError` with the reason: the run fails, nothing is
uploaded, promoted or deployed. onnxruntime and numpy are not in the trashsorter layer (Lambdas stay lean):
they come from ``OnnxRuntimeLayer``, attached to the package function only (docs/security.md). Without them
the proof cannot run and the event is retried (TransientError), never packaged unproven.
"""

from __future__ import annotations

import math
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from trashsorter.errors import PackagingError, TransientError
from trashsorter_edge.contract import LABELS_FILE, MODEL_FILE

PROOF_SECONDS = 60.0  # one CPU inference of a 224 px classifier takes well under a second
MAX_PROOF_MEMBER_BYTES = 512 * 1024**2  # model.onnx the package function (2 GiB) may load to prove it


def fixed_image() -> Image.Image:
    """The proof's input: a deterministic 320 x 240 RGB picture (gradients), no file needed."""
    red = Image.linear_gradient("L").resize((320, 240))
    green = red.transpose(Image.Transpose.ROTATE_90).resize((320, 240))
    blue = Image.radial_gradient("L").resize((320, 240))
    return Image.merge("RGB", (red, green, blue))


def _unpack(package: Path, into: Path) -> None:
    with tarfile.open(package, "r:gz") as tar:
        for name in (MODEL_FILE, LABELS_FILE):
            member = tar.getmember(name)
            if not member.isfile() or member.size > MAX_PROOF_MEMBER_BYTES:
                raise PackagingError(f"{name} in the package is not a regular file of at most 512 MiB")
            source = tar.extractfile(member)
            assert source is not None
            with source, (into / name).open("wb") as target:
                while chunk := source.read(1024 * 1024):
                    target.write(chunk)


def _check_layout(session: Any) -> None:
    graph_input = session.get_inputs()[0]
    shape = list(graph_input.shape)
    layout_ok = (
        graph_input.type == "tensor(float)"
        and len(shape) == 4
        and shape[1] == 3
        and not (isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] != shape[3])
    )
    if not layout_ok:
        raise PackagingError(
            f"the graph's input {graph_input.name!r} is {graph_input.type} {shape}; the device feeds "
            "float32 [N, 3, S, S] (NCHW RGB)"
        )


def prove_onnx_package(package: Path) -> dict[str, Any]:
    """Load and run the packaged model as the device does; PackagingError with the reason if it cannot.

    Returns what was proven (labels, input shape, seconds, the fixed image's top label) for the registry.
    """
    try:
        from trashsorter_edge.model import Model, ModelError
    except ImportError as exc:  # the layer is missing: a deployment problem, not the model's
        raise TransientError(
            f"the model proof needs onnxruntime and numpy (OnnxRuntimeLayer): {exc}"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="trashsorter-proof-") as tmp:
        model_dir = Path(tmp)
        _unpack(package, model_dir)
        try:
            model = Model(model_dir, model_id="proof")
        except ModelError as exc:
            raise PackagingError(f"the device cannot load the model: {exc}") from exc
        _check_layout(model.session)
        started = time.monotonic()
        try:
            row = [float(p) for p in model.probabilities([fixed_image()])[0]]
        except Exception as exc:  # whatever onnxruntime raises is the model's failure
            raise PackagingError(f"the model does not run on a fixed image: {exc}") from exc
        seconds = time.monotonic() - started
    labels = model.labels
    if len(row) != len(labels):
        raise PackagingError(f"the model gives {len(row)} outputs for {len(labels)} labels")
    if not all(math.isfinite(p) and p >= 0 for p in row) or not math.isclose(sum(row), 1.0, abs_tol=1e-3):
        raise PackagingError(f"the model's output on a fixed image is not a probability distribution: {row}")
    if seconds > PROOF_SECONDS:
        raise PackagingError(f"one inference took {seconds:.1f} s (limit {PROOF_SECONDS:.0f} s)")
    top = max(range(len(row)), key=row.__getitem__)
    return {
        "labels": list(labels),
        "input_shape": [d if isinstance(d, int) else str(d) for d in model.session.get_inputs()[0].shape],
        "seconds": round(seconds, 4),
        "fixed_image_label": labels[top],
    }
