"""The local AWS endpoint answers this machine's programs, not web pages: a WSGI guard in front of moto.

The endpoint accepts any credentials (there is no account to protect it), so what keeps a web page the user
happens to open from writing to it is this guard:

* **Host**: only a loopback name (``127.0.0.1``, ``localhost`` and its subdomains, ``[::1]``) or the address
  the endpoint was bound to. A DNS-rebinding page reaches the port under its own name (``Host:
  attacker.example:4566``) and is refused.
* **Origin / Sec-Fetch-Site**: a request a browser sends on behalf of another origin carries ``Origin`` (every
  write, every CORS preflight) or ``Sec-Fetch-Site: cross-site``/``same-site`` (also image and form loads,
  which can reach moto's query APIs). Unless the origin is the endpoint itself, it is refused with
  ``403 AccessDenied`` before moto sees it. The AWS CLI and boto3 send neither header: they work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_CROSS_SITE = frozenset({"cross-site", "same-site"})
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names never allowed as a Host


def _hostname(host: str) -> str:
    """The name of a Host header value (port removed; IPv6 brackets kept off)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class LocalRequestGuard:
    """``LocalRequestGuard(app, bind_host, port)``: refuses foreign Host names and cross-site browser
    requests; ``port`` 0 until the server knows it."""

    def __init__(self, app: Callable[..., Iterable[bytes]], bind_host: str, port: int = 0) -> None:
        self.app = app
        self.port = port
        self.names = LOOPBACK_NAMES | {_hostname(bind_host)} - _ANY_ADDRESS

    def host_allowed(self, host: str) -> bool:
        name = _hostname(host)
        return name in self.names or name.endswith(".localhost")

    def origin_allowed(self, origin: str) -> bool:
        parts = urlsplit(origin)
        return (
            parts.scheme == "http"
            and self.host_allowed(parts.netloc)
            and (not self.port or (parts.port or 80) == self.port)
        )

    def refusal(self, environ: dict[str, Any]) -> str | None:
        """Why a request is refused, or None."""
        host = environ.get("HTTP_HOST", "")
        if not self.host_allowed(host):
            return f"Host {host!r} is not this machine's local endpoint (only loopback names are answered)"
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            return (
                None if self.origin_allowed(origin) else f"requests from the web page {origin!r} are refused"
            )
        if environ.get("HTTP_SEC_FETCH_SITE", "").lower() in _CROSS_SITE:
            return "requests a browser sends for another site are refused"
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        reason = self.refusal(environ)
        if reason is None:
            return self.app(environ, start_response)
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
            f"<Message>{_xml(reason)}</Message></Error>"
        ).encode()
        start_response(
            "403 Forbidden",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body))), ("Vary", "Origin")],
        )
        return [body]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
