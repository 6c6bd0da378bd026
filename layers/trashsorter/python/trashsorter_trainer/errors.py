"""The trainer's one exception (the trainer runs in a training container without the Lambda layer)."""

from __future__ import annotations


class TrainerError(Exception):
    """Bad training data or configuration: the job fails with this readable reason."""
