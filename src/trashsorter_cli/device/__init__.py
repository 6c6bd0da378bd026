"""The local device: an onnxruntime classifier (``predictor``) behind a small HTTP server (``server``).

It plays the edge camera in local mode: the package step POSTs ``/deployments`` with an S3 artifact,
the CLI's ``predict`` POSTs image bytes to ``/predict``. Run standalone: ``python -m trashsorter_cli.device``.
"""
