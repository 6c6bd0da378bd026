"""trashsorter's edge app: classifies camera frames with the trained ONNX model, exactly as the trainer
evaluated (:mod:`trashsorter_edge.preprocessing` is THE preprocessing), and publishes the results.

Modules: ``preprocessing`` (one definition, shared with the trainer and the local device), ``model`` (one
onnxruntime session per model version, hot reload), ``sources`` (camera, video/stream, folder), ``outputs``
(stdout JSON lines, Greengrass IPC, AWS IoT data endpoint), ``app`` (the loop), ``cli``
(``trashsorter-edge``).
"""

__version__ = "0.1.0"
