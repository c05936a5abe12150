"""Messages of other libraries that a user can do nothing about, collected into one explained line each.

Some libraries log the same notice many times, or a notice whose advice does not apply:

* bitsandbytes' 8-bit matmul logs "MatMul8bitLt: inputs will be cast from torch.float32 to float16
  during quantization" on *every* call, once per layer per token (it is how its 8-bit CPU path works);
* bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community ... pip install
  kernels" on import on CPUs with AVX-512 bf16 when the optional ``kernels`` package (which
  downloads a compiled kernel from the Hugging Face hub) is missing; its generic 4-bit CPU path is
  used instead and answers are the same.

:func:`install` (called by the engine before it uses bitsandbytes) puts a filter on the loggers that
write them. With the default setting, ``MIDORI_HF_NB_THIRD_PARTY_LOGS=collect``, each known message
is dropped and its explanation is kept once, in :func:`notices`, and logged once on the
``midori_hf_nb.third_party`` logger at INFO level (not shown unless logging is configured to show
it), so a notebook gets no stderr box and no line per layer. ``MIDORI_HF_NB_THIRD_PARTY_LOGS=show``
lets every message through as the library writes it. Messages this module does not know are never
touched.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass

#: The environment variable that switches the collecting off (``show``) or on (``collect``, the default).
SWITCH = "MIDORI_HF_NB_THIRD_PARTY_LOGS"
MODES = ("collect", "show")

logger = logging.getLogger("midori_hf_nb.third_party")


@dataclass(frozen=True)
class KnownMessage:
    """A message of another library: the logger that writes it, a pattern of its text, and what it means."""

    key: str
    logger: str
    pattern: re.Pattern[str]
    explanation: str


KNOWN_MESSAGES = (
    KnownMessage(
        "bitsandbytes-8bit-cast", "bitsandbytes.autograd._functions", re.compile(r"MatMul8bitLt: inputs will be cast"),
        "bitsandbytes 8-bit: each matmul casts its float32 inputs to float16 (its 8-bit path works that way; "
        "bitsandbytes logs it on every call, once per layer per token)"),
    KnownMessage(
        "bitsandbytes-cpu-4bit-kernel", "bitsandbytes.backends.cpu.ops", re.compile(r"gemm_4bit_forward"),
        "bitsandbytes 4-bit on CPU: the optional `kernels` package (a faster AVX-512 4-bit kernel fetched from "
        "the Hugging Face hub) is not available, so its generic CPU path runs; answers are the same"),
)

_lock = threading.Lock()
_notices: dict[str, str] = {}
_installed = False


def mode() -> str:
    """The current setting of :data:`SWITCH` (``collect`` when unset); ``ValueError`` names a bad value."""
    value = (os.environ.get(SWITCH) or "collect").strip().lower()
    if value not in MODES:
        raise ValueError(f"{SWITCH}={value!r} is not allowed: expected one of {', '.join(MODES)}")
    return value


class _Collector(logging.Filter):
    def __init__(self, messages: list[KnownMessage]) -> None:
        super().__init__()
        self.messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if mode() == "show":
                return True
        except ValueError:
            return True  # a bad switch value: hide nothing (install() reported it)
        text = record.getMessage()
        for message in self.messages:
            if message.pattern.search(text):
                note(message)
                return False
        return True


def note(message: KnownMessage) -> None:
    """Keep ``message``'s explanation (once) and log it once at INFO level."""
    with _lock:
        if message.key in _notices:
            return
        _notices[message.key] = message.explanation
    logger.info("%s (collected; %s=show shows the library's own messages)", message.explanation, SWITCH)


def install() -> None:
    """Put the collecting filter on the loggers of :data:`KNOWN_MESSAGES` (once per process; before
    the library is imported, so messages logged on import are caught too). A bad value of
    :data:`SWITCH` is reported with a warning and shows every message."""
    global _installed
    try:
        mode()
    except ValueError as exc:
        warnings.warn(f"{exc}; the libraries' own messages are shown", UserWarning, stacklevel=2)
    with _lock:
        if _installed:
            return
        _installed = True
    by_logger: dict[str, list[KnownMessage]] = {}
    for message in KNOWN_MESSAGES:
        by_logger.setdefault(message.logger, []).append(message)
    for name, messages in by_logger.items():
        logging.getLogger(name).addFilter(_Collector(messages))


def notices() -> list[str]:
    """The explanations of the messages collected so far in this process, one line each, in order."""
    with _lock:
        return list(_notices.values())


__all__ = ["KNOWN_MESSAGES", "KnownMessage", "MODES", "SWITCH", "install", "mode", "note", "notices"]
