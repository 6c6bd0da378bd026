"""The local CPU trainer: EfficientNet-Lite0 transfer learning exported to ONNX (see docs/local-training.md).

Submodules: ``data`` (Pillow/numpy only: decoding, THE preprocessing, augmentation), ``model``, ``train``
(``train()``, ``train_from_directory()``), ``report`` (metrics, confusion-matrix PNG), ``job`` (the
S3/DynamoDB/EventBridge job wrapper run as ``python -m trashsorter_cli.trainer``), ``bench``.
torch is imported only by ``model``/``train``/``job``, so importing this package stays cheap.
"""
