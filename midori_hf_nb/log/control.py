"""Where the call log lives and whether it records: the process-wide switch, the location, the
size bound and the redaction hook, read once from the environment and changed from code.

* ``MIDORI_HF_NB_LOG``: unset (or ``on``, ``1``, ``true``, ``yes``): record to the default
  location (:func:`default_location`); ``off`` (``0``, ``false``, ``no``): record nothing unless an
  agent or a call asks for it; anything else: the path of the database file to record to.
* ``MIDORI_HF_NB_LOG_MAX_MB``: the size bound of a log file in MiB (default
  :data:`DEFAULT_MAX_BYTES`); once a file reaches it, calls are not recorded there (one warning
  says so) until entries are deleted or the bound raised.

A call's ``log=`` option, then the log context's (:mod:`.context`), then the agent's ``log=``
decide for that call (:func:`resolve_target`): ``None`` follows the process switch, ``False``
records nothing, ``True`` records to the current location even when the switch is off, and a
path records to that database (one per experiment, say).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: the environment variable that switches the log off or points it elsewhere
LOG_ENV = "MIDORI_HF_NB_LOG"
#: the environment variable holding the size bound, in MiB
MAX_MB_ENV = "MIDORI_HF_NB_LOG_MAX_MB"
#: the default size bound of one log file: 1 GiB
DEFAULT_MAX_BYTES = 1 << 30
#: the log file's name in the default folder
LOG_FILE_NAME = "logs.db"

_OFF_WORDS = ("0", "off", "false", "no")
_ON_WORDS = ("", "1", "on", "true", "yes")


class LogOptionError(ValueError):
    """A ``log=`` option, a log path or a bound that is not allowed; the message names it."""


def default_location() -> Path:
    """The default log file: ``$XDG_DATA_HOME/midori-hf-nb/logs.db`` (``~/.local/share/...``
    when the variable is unset); ``%LOCALAPPDATA%\\midori-hf-nb\\logs.db`` on Windows."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "midori-hf-nb" / LOG_FILE_NAME


def as_log_path(value: Any, where: str = "log") -> Path:
    """``value`` (a text or ``os.PathLike`` naming a file) as an absolute path; a folder means
    ``FOLDER/logs.db``. Raises :class:`LogOptionError` naming ``where`` otherwise."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise LogOptionError(f"{where}={value!r} is not allowed: expected True, False, None or the path of a "
                             "log database file")
    path = Path(value.strip()).expanduser()
    if path.is_dir():
        path = path / LOG_FILE_NAME
    return path.absolute()


def check_log_option(value: Any, where: str = "log") -> bool | Path | None:
    """A ``log=`` option checked: None, True, False, or a path (returned absolute)."""
    if value is None or isinstance(value, bool):
        return value
    return as_log_path(value, where)


def check_max_bytes(value: Any, where: str = "max_bytes") -> int:
    """A size bound in bytes: an integer of at least 64 KiB."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 65536:
        raise LogOptionError(f"{where}={value!r} is not allowed: expected a whole number of bytes, at least 65536")
    return value


@dataclass
class LogState:
    """The process-wide settings of the call log (see the module docstring)."""

    enabled: bool = True
    path: Path = field(default_factory=default_location)
    max_bytes: int = DEFAULT_MAX_BYTES
    redactor: Callable[[dict[str, Any]], Any] | None = None
    #: what the environment said, for a message when a value there was not usable
    notes: list[str] = field(default_factory=list)


def state_from_environment(environ: Any = None) -> LogState:
    """The settings the environment asks for (:data:`LOG_ENV`, :data:`MAX_MB_ENV`)."""
    environ = os.environ if environ is None else environ
    state = LogState()
    raw = environ.get(LOG_ENV)
    if raw is not None:
        word = raw.strip().lower()
        if word in _OFF_WORDS:
            state.enabled = False
        elif word not in _ON_WORDS:
            try:
                state.path = as_log_path(raw, LOG_ENV)
            except LogOptionError as exc:
                state.notes.append(f"{exc}; the default location is used")
    raw_max = environ.get(MAX_MB_ENV)
    if raw_max:
        try:
            megabytes = float(raw_max)
            state.max_bytes = check_max_bytes(int(megabytes * (1 << 20)), MAX_MB_ENV)
        except (ValueError, LogOptionError):
            state.notes.append(f"{MAX_MB_ENV}={raw_max!r} is not a size in MiB of at least 0.0625; "
                               f"the default bound of {DEFAULT_MAX_BYTES >> 20} MiB is used")
    return state


_LOCK = threading.Lock()
_STATE: LogState | None = None


def state() -> LogState:
    """The current settings (read from the environment on first use)."""
    global _STATE
    current = _STATE
    if current is None:
        with _LOCK:
            if _STATE is None:
                _STATE = state_from_environment()
            current = _STATE
    return current


def reset_from_environment() -> LogState:
    """Forget settings made from code and read the environment again (for tests and tools
    that change the environment at run time)."""
    global _STATE
    with _LOCK:
        _STATE = state_from_environment()
        return _STATE


def resolve_target(*options: Any) -> Path | None:
    """The database a call records to, or None: the first of ``options`` that is not None
    decides (call, context, agent, in that order); all None follows the process switch."""
    current = state()
    for option in options:
        if option is None:
            continue
        if option is False:
            return None
        if option is True:
            return current.path
        return option if isinstance(option, Path) else as_log_path(option)
    return current.path if current.enabled else None


__all__ = ["DEFAULT_MAX_BYTES", "LOG_ENV", "LOG_FILE_NAME", "LogOptionError", "LogState", "MAX_MB_ENV",
           "as_log_path", "check_log_option", "check_max_bytes", "default_location", "reset_from_environment",
           "resolve_target", "state", "state_from_environment"]
