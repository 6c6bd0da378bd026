"""Local tools around the project's trainer (the trainer itself is :mod:`trashsorter_trainer`).

Submodules: ``job`` (the S3/DynamoDB/EventBridge job wrapper run as ``python -m trashsorter_cli.trainer``),
``bench`` and ``crossval`` (measurements). torch is imported only where training happens, so importing this
package stays cheap.
"""

# The trainer's process settings (its OpenMP wait policy) come before a submodule here loads torch.
import trashsorter_trainer  # noqa: F401
