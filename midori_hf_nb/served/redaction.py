"""Keeping the API key out of what a server sends back: answer text, reasoning, tool calls and
model ids, and the DEBUG log records of the HTTP client (a server may echo the key in a header).

The rule: every occurrence of the key (however short; not the ``no-key`` placeholder) is
replaced by ``***`` before anything reaches a stream, a response, a log line, a transcript or an
export, and a response whose text had the key says so in ``stats.notes``. The key is
recognised also when a server splits it across pieces: :class:`KeyMasker` holds back the end of
a piece that could be the start of the key until the next piece tells.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from .errors import KEY_MASK, NO_KEY, scrub

#: the loggers of the HTTP stack under the served agent (and their children)
HTTP_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")


def secret_of(key: Any) -> str | None:
    """The text to mask for an :class:`~.config.ApiKey` (None for the placeholder)."""
    value = key.reveal() if hasattr(key, "reveal") else key
    return value if isinstance(value, str) and value and value != NO_KEY else None


class KeyMasker:
    """Masks the key in a text that arrives in pieces: :meth:`feed` gives what can be shown now,
    :meth:`finish` the rest; :attr:`found` counts the occurrences masked."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.held = ""
        self.found = 0

    def feed(self, text: str) -> str:
        secret = self.secret
        if not secret:
            return text
        text = self.held + text
        count = text.count(secret)
        if count:
            self.found += count
            text = text.replace(secret, KEY_MASK)
        keep = 0
        start = max(0, len(text) - len(secret) + 1)
        while True:  # the earliest place from which the rest of the text could begin the key
            index = text.find(secret[0], start)
            if index < 0:
                break
            if secret.startswith(text[index:]):
                keep = len(text) - index
                break
            start = index + 1
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self) -> str:
        rest, self.held = self.held, ""
        return rest


def scrub_value(value: Any, secret: str | None) -> tuple[Any, int]:
    """``value`` (JSON data) with the key masked in every string, and how many were masked."""
    if not secret:
        return value, 0
    if isinstance(value, str):
        return scrub(value, secret), value.count(secret)
    if isinstance(value, list):
        items = [scrub_value(item, secret) for item in value]
        return [item for item, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        found, out = 0, {}
        for key, item in value.items():
            new_key, n = scrub_value(key, secret)
            new_item, m = scrub_value(item, secret)
            out[new_key] = new_item
            found += n + m
        return out, found
    return value, 0


class _KeyFilter(logging.Filter):
    """Masks every registered key in the records of the HTTP stack's loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for s in (secret_of(k) for k in list(self.keys)) if s]
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to the handler
            return True
        masked = message
        for secret in secrets:
            masked = scrub(masked, secret)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = _KeyFilter()
_LOCK = threading.Lock()


def guard_logs(key: Any) -> None:
    """Mask ``key`` (an :class:`~.config.ApiKey`, held weakly) in the log records of the HTTP
    stack: the filter goes on every logger of :data:`HTTP_LOGGERS` and their children that
    exist now (call again after importing the client, as the agent does for each client)."""
    if secret_of(key) is None:
        return
    with _LOCK:
        _FILTER.keys.add(key)
        names = [name for name in list(logging.root.manager.loggerDict)
                 if name.split(".", 1)[0] in HTTP_LOGGERS]
        for name in {*HTTP_LOGGERS, *names}:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


__all__ = ["HTTP_LOGGERS", "KeyMasker", "guard_logs", "scrub_value", "secret_of"]
