"""Every domain exception in one place.

Two families matter to the handlers:

* :class:`Rejection` - a business outcome (bad image, unknown label). It is recorded and the handler
  returns normally.
* :class:`TransientError` - something that may succeed later (throttling, a race lost too often). It is
  raised out of the handler so the queue / EventBridge retries and the DLQ finally catches it.

Wrap lower-level exceptions with ``raise XError(...) from exc``.
"""

from __future__ import annotations


class TrashsorterError(Exception):
    """Base of all trashsorter errors."""


class ConfigurationError(TrashsorterError):
    """Settings are missing or invalid (raised at cold start) or a required resource is not configured."""


class Rejection(TrashsorterError):
    """An input refused for a reason a person can read.

    ``code`` is a stable machine-readable reason code (``unsupported_format``, ``too_large`` ...),
    ``message`` the human sentence stored on the catalogue record.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransientError(TrashsorterError):
    """A failure worth retrying; handlers let it escape so the message is retried / dead-lettered."""


class ConcurrencyConflict(TransientError):
    """A conditional write lost a race more often than the retry budget allows."""


class NotFoundError(TrashsorterError):
    """A record, object or run that should exist does not."""


class TrainingRuleNotMet(TrashsorterError):
    """A manual training trigger while the training rule is false; ``missing`` says what is missing."""

    def __init__(self, message: str, missing: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or {}


class TrainingStartError(TrashsorterError):
    """SageMaker refused a training job (quota, validation); the run is recorded as blocked/failed."""


class TrainingQuotaExceeded(TrainingStartError):
    """ResourceLimitExceeded (instance quota): the run is ``blocked``, the trigger kept pending."""


class TrainingError(TrashsorterError):
    """The training itself failed (missing/corrupt images, bad manifest, out of memory); the message
    becomes the FailureReason of the Failed training event."""


class PackagingError(TrashsorterError):
    """The training artifact is missing or corrupt, or cannot be repackaged."""


class DeploymentError(TrashsorterError):
    """A Greengrass (v1 or v2) or local-device deployment failed."""
