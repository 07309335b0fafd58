"""Who may talk to the HTTP API: the Host, Origin and Sec-Fetch-Site checks, and the rule
that a non-loopback listener needs a token.

Contract (``docs/http.md``, section Security):

* **DNS rebinding.** Every request's ``Host`` must name this server: a loopback name or
  address when it listens on loopback, its own address when it listens on one, any IP
  literal when it listens on a wildcard address (an IP literal cannot be rebound), or a
  name listed in ``[http] allowed_hosts`` (the name a reverse proxy forwards). Anything
  else gets 403 before a route runs. The port is not compared (proxies change it).
* **Cross-site requests.** A browser request whose ``Sec-Fetch-Site`` is neither
  ``same-origin`` nor ``none`` (typed in the address bar), or whose ``Origin`` is not the
  ``Host`` it was sent to, gets 403: a page on another site cannot make the operator's
  browser run a query, even a GET. Clients that are not browsers send neither header.
* **No open door off the machine.** :func:`require_token_off_loopback` raises
  :class:`~tickvault.core.errors.ConfigError` when the listen address is not loopback and no
  token is set; the API is then not served at all.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

from tickvault.core.errors import ConfigError

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """True for ``127.0.0.0/8``, ``::1`` and the usual loopback names."""
    ip = _ip(host)
    return ip.is_loopback if ip is not None else host.lower() in _LOOPBACK_NAMES


def split_host(value: str) -> str:
    """The host part of a ``Host`` header value (``name:port``, ``[v6]:port``), lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.rsplit(":", 1)[0]
    return value


class RequestGuard:
    """Decides whether a request's Host/Origin/Sec-Fetch-Site headers may be served."""

    def __init__(self, listen_host: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.listen_host = listen_host.strip("[]").lower()
        self.allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
        listen_ip = _ip(self.listen_host)
        self.loopback = is_loopback(self.listen_host)
        self.wildcard = listen_ip is not None and listen_ip.is_unspecified

    def host_allowed(self, host_header: str) -> bool:
        host = split_host(host_header)
        if not host:
            return False
        if host in self.allowed or host == self.listen_host:
            return True
        if self.loopback:
            return is_loopback(host)
        ip = _ip(host)
        return self.wildcard and ip is not None

    def refusal(self, headers: dict[str, str]) -> str | None:
        """Why the request must be refused (403), or None when it may be served."""
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return (
                f"Host {host!r} is not a name of this server (add it to [http] allowed_hosts"
                " if a proxy forwards it)"
            )
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.lower() not in _SAME_SITE_FETCH:
            return f"cross-site browser request refused (Sec-Fetch-Site: {fetch_site})"
        origin = headers.get("origin")
        if origin is not None:
            parts = urllib.parse.urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != host.strip().lower():
                return f"cross-origin browser request refused (Origin: {origin})"
        return None


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare ``port`` (loopback) → (host, port)."""
    text = listen.strip()
    if text.isdigit():
        return "127.0.0.1", int(text)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"[http] listen must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if number > 65535:
        raise ConfigError(f"[http] listen port out of range: {listen!r}")
    return host, number


def require_token_off_loopback(listen: str, host: str, token: str | None, env_name: str) -> None:
    """Raise ConfigError when ``host`` is not loopback and there is no token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"{listen} is not a loopback address and no token is set, so anyone who reaches"
            f" the port could query the store; put a bearer token in"
            f" ${env_name or 'TICKVAULT_HTTP_TOKEN'} ([http] token_env) or listen on"
            " 127.0.0.1 behind a proxy (docs/http.md, Security)"
        )
