"""moto's KMS makes a key's RSA pair when something first signs, verifies or asks for the public key (tested
moto versions only).

moto 5.2 generates a private key for every KMS key it creates, a 2,048-bit RSA pair for a symmetric
(``SYMMETRIC_DEFAULT``) key too, although only asymmetric keys ever use it (``Sign``, ``Verify``,
``GetPublicKey``); symmetric ``Encrypt``/``Decrypt``/``GenerateDataKey`` use the key's own material. The
stack's encryption key is symmetric, so every stack created for a test or by ``local up`` paid for an RSA
pair nobody reads (about an eighth of a stack's creation CPU, measured with py-spy).

The patch hands each key a stand-in that generates the pair moto would have generated, with moto's own
function and the key's spec, on first use, and from then on is that pair. Every answer is the same;
``tests/integration/test_moto_kms.py`` signs, verifies and reads public keys through it.
"""

from __future__ import annotations

import threading
from typing import Any

_ORIGINAL: list[Any] = []


class _PrivateKeyOnFirstUse:
    """moto's private key for ``key_spec``, generated when first used."""

    def __init__(self, generate: Any, key_spec: str) -> None:
        self._generate = generate
        self._key_spec = key_spec
        self._key: Any = None
        self._lock = threading.Lock()

    def generated(self) -> Any:
        with self._lock:
            if self._key is None:
                self._key = self._generate(self._key_spec)
            return self._key

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.generated(), name)


def install() -> None:
    """Key creation hands out :class:`_PrivateKeyOnFirstUse` (idempotent)."""
    from moto.kms import models

    if _ORIGINAL:
        return
    generate = models.generate_private_key
    _ORIGINAL.append(generate)

    def generate_private_key(key_spec: str) -> Any:
        return _PrivateKeyOnFirstUse(generate, key_spec)

    models.generate_private_key = generate_private_key  # type: ignore[assignment]


def uninstall() -> None:
    """moto's own key creation again."""
    from moto.kms import models

    if _ORIGINAL:
        models.generate_private_key = _ORIGINAL.pop()  # type: ignore[assignment]
