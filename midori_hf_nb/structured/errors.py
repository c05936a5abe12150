"""The error of structured output."""

from __future__ import annotations

from ..config import ConfigError


class StructuredOutputError(ConfigError):
    """A ``response_format`` or ``tool_choice`` cannot be used: not an accepted kind, a schema the
    constraint library cannot compile, a tokenizer it cannot read, or the library is missing. The
    message names the field and what to change. A ``ValueError`` (through ``ConfigError``)."""


#: How to install the constraint library.
INSTALL_HINT = "install the 'structured' extra: pip install 'midori-hf-nb[structured]' (it adds llguidance)"
