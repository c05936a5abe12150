"""``%load_ext midori_hf_nb``: the ``%midori`` line magic and the ``%%midori`` cell magic.

Quick start::

    %load_ext midori_hf_nb

    %%midori --max-new-tokens 64
    What is the capital of France?

The cell is sent as the user message and the answer streams into the output. With no agent
loaded, the first ``%%midori`` uses the offline default model; ``%midori use VAR`` sends the
messages to any Midori protocol agent held in a notebook variable instead. Conversation memory
across cells is on by default. ``%midori help`` lists the commands in a few lines;
``%midori help COMMAND`` (or ``--help`` after a command, ``%%midori --help`` alone in a cell) gives
one command's options, ``%midori help all`` every option; bad options and settings print a usage
error naming them, not a traceback.

Line commands: ``help``, ``load``, ``use``, ``ask``, ``history``, ``reset``, ``memory``,
``unload``, ``status``, ``log``. The session (agent, conversation, defaults) is :func:`current_session`.

The package: :mod:`.parsers` (argument parsers, help, interpolation), :mod:`.session` (the
session and the checking of settings) and :mod:`.commands` (the magics and the extension's
entry points).
"""

from __future__ import annotations

from .commands import MidoriMagics, current_session, load_ipython_extension, unload_ipython_extension
from .parsers import CELL_PARSER, COMMAND_PARSERS, LINE_PARSER, full_help, interpolate
from .session import MidoriSession

__all__ = [
    "CELL_PARSER",
    "COMMAND_PARSERS",
    "LINE_PARSER",
    "MidoriMagics",
    "MidoriSession",
    "current_session",
    "full_help",
    "interpolate",
    "load_ipython_extension",
    "unload_ipython_extension",
]
