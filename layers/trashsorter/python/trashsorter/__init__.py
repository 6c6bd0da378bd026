"""trashsorter domain package: shipped as the Lambda layer and as the installable project package.

Importable and unit-testable without AWS; every AWS client is injected (``client=None`` means the
module-level default from :mod:`trashsorter.aws`).
"""

__version__ = "0.1.0"
