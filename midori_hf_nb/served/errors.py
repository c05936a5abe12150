"""Errors of an agent on an OpenAI-compatible server, one class per way a call can fail.

Every message names the server's base URL and the model, and says what to check; none ever
contains the API key (:func:`scrub` removes it from any text taken from a server or a library,
whatever its length).
"""

from __future__ import annotations

from typing import Sequence

#: what stands in for an API key wherever one would otherwise be shown
KEY_MASK = "***"
#: sent when there is no key at all (not a secret: never masked)
NO_KEY = "no-key"


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (an API key, however short) replaced by
    :data:`KEY_MASK`; the placeholder :data:`NO_KEY` is no secret and stays."""
    if secret and secret != NO_KEY and secret in text:
        text = text.replace(secret, KEY_MASK)
    return text


class ServedAgentError(RuntimeError):
    """A call to an OpenAI-compatible server failed; ``base_url`` and ``model`` say where."""

    def __init__(self, message: str, *, base_url: str, model: str, status: int | None = None) -> None:
        super().__init__(message)
        self.base_url = base_url
        self.model = model
        #: the HTTP status the server answered with (None when no answer came)
        self.status = status


class ServerUnreachableError(ServedAgentError, ConnectionError):
    """Nothing answered at the base URL (refused connection, unknown host, dropped connection)."""


class ServerAuthError(ServedAgentError, PermissionError):
    """The server refused the API key (HTTP 401 or 403)."""


class UnknownModelError(ServedAgentError, LookupError):
    """The server does not serve the model; ``available`` lists what it does serve (when it says)."""

    def __init__(self, message: str, *, base_url: str, model: str, status: int | None = None,
                 available: Sequence[str] = ()) -> None:
        super().__init__(message, base_url=base_url, model=model, status=status)
        self.available = list(available)


class ServerTimeoutError(ServedAgentError, TimeoutError):
    """The server did not answer within the agent's ``timeout`` (or ``connect_timeout``)."""


class ServerRequestError(ServedAgentError):
    """The server answered the request with an error status other than the ones above."""


__all__ = ["KEY_MASK", "NO_KEY", "ServedAgentError", "ServerAuthError", "ServerRequestError", "ServerTimeoutError",
           "ServerUnreachableError", "UnknownModelError", "scrub"]
