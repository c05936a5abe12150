"""Tool descriptions: the Google-style docstring reader and ``get_json_schema`` of transformers.
Imports ``transformers.utils`` only, never torch (describing a tool loads no model library)."""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

from .fallbacks import fallback


def parse_google_docstring(doc: str) -> tuple[str | None, dict[str, str] | None, str | None]:
    """(description, argument descriptions, returns) of a Google-style docstring.

    Relies on ``transformers.utils.chat_template_utils.parse_google_format_docstring``, the
    parser behind ``get_json_schema`` (transformers 4.42 through 5.24), so a docstring reads the
    same to both.
    """
    from transformers.utils.chat_template_utils import parse_google_format_docstring

    return parse_google_format_docstring(doc)


_schema_lock = threading.Lock()


def function_json_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a typed callable with a Google-style docstring, by transformers'
    ``get_json_schema`` (``transformers.utils``, public since 4.42), the format chat templates expect.

    ``get_json_schema`` imports torch (2-3 s) only to map a ``torch.Tensor`` type hint, which no
    function can carry before torch is imported. So while torch is not imported, the call runs with
    ``transformers.utils.chat_template_utils.is_torch_available`` (a module global there, 4.42
    through 5.24) answering False, and describing tools loads no model library. Where that name is
    gone, the call runs as it is and a :class:`~.fallbacks.FastPathWarning` says torch is imported.
    """
    from transformers.utils import chat_template_utils

    if "torch" in sys.modules:
        return chat_template_utils.get_json_schema(fn)
    if not callable(getattr(chat_template_utils, "is_torch_available", None)):
        fallback("schema_without_torch", (
            "transformers.utils.chat_template_utils has no is_torch_available: describing a tool imports torch"))
        return chat_template_utils.get_json_schema(fn)
    with _schema_lock:
        original = chat_template_utils.is_torch_available
        chat_template_utils.is_torch_available = lambda: False
        try:
            return chat_template_utils.get_json_schema(fn)
        finally:
            chat_template_utils.is_torch_available = original
