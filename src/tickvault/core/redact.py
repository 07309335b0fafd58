"""Secrets out of everything tickvault shows: logs, ``status``, ``/status``, ``/metrics``,
the dashboard and error messages.

One rule, applied in one place per output:

* in every URL (``scheme://...``) found in a text, the password of ``user:password@``
  becomes ``***`` (the user name stays, it helps reading a log), a Telegram bot path
  ``/bot<token>/`` becomes ``/bot***/``, and the values of query parameters whose name says
  secret (``token``, ``password``, ``key``, ``secret``, ``auth``...) become ``***``;
* every value registered with :func:`register_secret` (the HTTP bearer token, the alert
  channel tokens: whatever :mod:`tickvault.core.config` reads from the environment as a secret)
  is replaced by ``***`` wherever it appears, in a URL or not.

:func:`redact_text` does it to a string, :func:`redact_value` to a JSON-able document,
:func:`redact_record` to a log record; :func:`install_log_redaction` makes the last one
the process's log record factory (the CLI's entry point and its logging setup call it),
so a line logged by any module, a library included, passes through it.

Hand-written because the rule is tickvault's own (which query names are secret, the
Telegram path); the URL scan is a regular expression, the parsing is ``urllib.parse``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

MASK = "***"
_SECRET_PARAMS = re.compile(
    r"(token|passw(or)?d|pwd|secret|key|auth|signature|credential|session)", re.IGNORECASE
)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/@?#]*)@")
_BOT_PATH = re.compile(r"/bot\d+:[^/?#]+")
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;]+)=([^&#;]*)")
_MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears from now on (values shorter than 4 are ignored:
    masking every ``"ab"`` in every text would hide more than it protects)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def _redact_url(url: str) -> str:
    """One URL with its password, bot token and secret query values masked; the rest of
    the text is kept byte for byte (``sqlite:///path`` stays as it is)."""
    url = _USERINFO.sub(_mask_userinfo, url, count=1)
    url = _BOT_PATH.sub(f"/bot{MASK}", url)
    return _QUERY_PARAM.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}={MASK}" if _SECRET_PARAMS.search(m.group(2)) else m.group(0)
        ),
        url,
    )


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match.group(2).partition(":")
    # ``user:password@``, or a bare ``token@`` (some services put the key there)
    return f"{match.group(1)}{user}:{MASK}@" if sep else f"{match.group(1)}{MASK}@"


def redact_text(text: str) -> str:
    """``text`` with URL credentials and registered secrets replaced by ``***``."""
    if "://" in text:
        text = _URL.sub(lambda m: _redact_url(m.group(0)), text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_value(value: Any) -> Any:
    """A copy of a JSON-able document with every string passed through :func:`redact_text`."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite ``record``'s message (and traceback text) through :func:`redact_text`."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: the handler reports it as usual
        return record
    record.msg = redact_text(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    return record


class _RedactingFactory:
    """A log record factory that redacts every record as it is created."""

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(self.inner(*args, **kwargs))


def install_log_redaction() -> None:
    """Redact every log record of the process from now on (idempotent).

    Installed as the log record factory rather than as a handler filter, so it holds for
    every handler (the CLI's, Python's last-resort one, any a user adds) and every logger,
    the libraries' included.
    """
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
