"""The one place the optional ``openai`` client is imported (on the first call, never at import time)."""

from __future__ import annotations

from typing import Any


def import_openai() -> Any:
    """The ``openai`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import openai
    except ImportError:
        raise ImportError("OpenAICompatibleAgent needs the openai client: pip install 'midori-hf-nb[openai]'") from None
    return openai



def http_failure(exc: BaseException, response: Any) -> str | None:
    """What kind of HTTP failure ``exc`` (raised while reading ``response``'s body) is:
    ``"timeout"``, ``"decoding"`` (a compressed body that does not inflate), ``"transport"``
    (the connection broke), or None when it is none of the HTTP library's errors.

    The HTTP library is the one ``response`` comes from (``httpx2`` for ``openai`` 3, ``httpx``
    before), found by the response's module; both name these errors alike.
    """
    import sys

    library = sys.modules.get(type(response).__module__.partition(".")[0])
    if library is None:
        return None
    kinds = (("timeout", "TimeoutException"), ("decoding", "DecodingError"), ("transport", "TransportError"),
             ("transport", "StreamError"))
    for kind, name in kinds:
        cls = getattr(library, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return kind
    return None


__all__ = ["http_failure", "import_openai"]
