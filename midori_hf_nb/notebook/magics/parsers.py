"""The magics' argument parsers and help, variable interpolation and line splitting.

argparse errors become IPython ``UsageError`` (one clear line, no traceback); ``--help`` prints
the help and sends nothing. Allowed values come from the core (:data:`midori_hf_nb.config.DTYPES`),
never copied here.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from typing import Any

from IPython.core.error import UsageError

from ...config import DTYPES
from ..streaming import DEFAULT_THROTTLE
from .log_command import add_log_parser


class HelpShown(Exception):
    """argparse printed help (``--help``): nothing else to do."""


#: Width of the help text: wide enough that most options take one line in a notebook output.
HELP_WIDTH = 110


class CompactHelpFormatter(argparse.HelpFormatter):
    """argparse help with one line per option where it fits: ``-s, --system TEXT`` (the metavar
    once), the help text beside it, :data:`HELP_WIDTH` characters wide."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=HELP_WIDTH)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


class MagicParser(argparse.ArgumentParser):
    """argparse that reports errors as IPython ``UsageError`` (one clear line, no traceback)
    and writes compact help (:class:`CompactHelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", CompactHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}\nusage: {self.format_usage().removeprefix('usage: ').strip()}\n"
                         f"Run `{help_command(self.prog)}` for its options.")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message)
        raise HelpShown()


def _add_decoding_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    """--max-new-tokens, and --temperature or --greedy (one of them)."""
    parser.add_argument("-n", "--max-new-tokens", type=int, metavar="N", help=f"{prefix}upper bound on generated tokens")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-t", "--temperature", type=float, metavar="T",
                      help=f"{prefix}sampling temperature 0.0-2.0 (a value above 0 turns sampling on)")
    mode.add_argument("-g", "--greedy", action="store_true", help=f"{prefix}greedy decoding (deterministic)")


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", "--system", metavar="TEXT",
                        help="system prompt for this message (default: the session's, set with `load --system`)")
    _add_decoding_options(parser, "")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed for sampling")
    parser.add_argument("--schema", metavar="NAME",
                        help="constrain the answer to JSON matching the notebook variable NAME (a pydantic model "
                             "class, a JSON schema dict or a Python type; `json`: any JSON object); the response's "
                             ".parsed holds the result (store it with --name)")
    parser.add_argument("--name", metavar="VAR", help="store the AgentResponse in this notebook variable")
    parser.add_argument("--no-memory", action="store_true",
                        help="send without the conversation so far, and do not record this exchange")
    parser.add_argument("--no-stream", action="store_true",
                        help="wait for the whole answer, then show it (no live updates)")
    parser.add_argument("--raw", action="store_true", help="send the text as is: no {variable} interpolation")
    parser.add_argument("--hide-thinking", action="store_true", help="do not show the model's reasoning")
    parser.add_argument("--plain", action="store_true",
                        help="show the answer as plain text instead of rendered Markdown")
    parser.add_argument("--probs", nargs="?", const="probability", choices=("probability", "surprisal"),
                        metavar="SHADE",
                        help="show the answer's tokens shaded by probability (or `surprisal`), with the top 5 "
                             "alternatives of each on hover (asks the agent for top_logprobs=5)"),
    parser.add_argument("--throttle", type=float, metavar="SECONDS",
                        help=f"seconds between display updates (default {DEFAULT_THROTTLE})")


def _add_load_options(load: argparse.ArgumentParser) -> None:
    load.add_argument("-m", "--model", metavar="MODEL",
                      help="hub id, local model directory, .gguf file, or offline:smollm2-135m-instruct (default)")
    load.add_argument("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps")
    load.add_argument("--dtype", choices=DTYPES,
                      help="weights dtype, one of " + ", ".join(DTYPES) + " (auto: the engine's choice for the "
                           "device and CPU; float32 is exact)")
    quant = load.add_mutually_exclusive_group()
    quant.add_argument("--8bit", dest="load_in_8bit", action="store_true",
                       help="bitsandbytes 8-bit weights (saves memory; on CPU generation is slower)")
    quant.add_argument("--4bit", dest="load_in_4bit", action="store_true",
                       help="bitsandbytes 4-bit weights (saves memory; on CPU generation is slower)")
    quant.add_argument("--no-quantization", action="store_true", help="full-precision weights")
    _add_decoding_options(load, "default ")
    load.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass, in (0, 1]")
    load.add_argument("--top-k", type=int, metavar="K", help="top-k sampling")
    load.add_argument("--context-window", type=int, metavar="N", help="prompt plus answer tokens")
    load.add_argument("-s", "--system", metavar="TEXT", help="the session's default system prompt")
    load.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a further configuration field (e.g. num_threads=1, decode_loop=generate) or generate() "
                           "option (e.g. repetition_penalty=1.2), repeatable. Names are checked before anything "
                           "loads, values with one trial token before the new model replaces the session's: one "
                           "that is not allowed is refused and never kept")
    load.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")
    load.add_argument("--no-progress", action="store_true", help="no progress bars while loading")


def build_parsers() -> tuple[MagicParser, MagicParser, dict[str, MagicParser]]:
    """The ``%midori`` parser, the ``%%midori`` parser and one parser per line command."""
    cell = MagicParser(
        prog="%%midori", add_help=True,
        description="Send the cell body as the user message and stream the answer into the output. "
                    "{name} in the body is replaced by the notebook variable `name` ({{ and }} for literal braces).",
    )
    _add_generation_options(cell)

    line = MagicParser(prog="%midori", add_help=True, description="Manage the notebook's agent and conversation.")
    sub = line.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicParser)
    commands: dict[str, MagicParser] = {}

    commands["help"] = sub.add_parser("help", help="list the commands (or `help COMMAND`: one command's options)",
                                      description="List the commands, or show the options of one.")
    commands["help"].add_argument("topic", nargs="?",
                                  help="a command name, `cell` for the cell magic, or `all` for everything")

    load = sub.add_parser(
        "load", help="load or switch the session's local model",
        description="Load a local model (or switch model or settings). Options not given keep their current "
                    "values; the first load starts from the offline default model and the core defaults.")
    _add_load_options(load)
    commands["load"] = load

    use = sub.add_parser(
        "use", help="use an agent from a notebook variable, or a model on an OpenAI-compatible server",
        description="Send the session's messages to the agent in notebook variable VAR: a HuggingFaceLocalAgent "
                    "or any other Midori protocol agent. The session does not unload an agent it did not create. "
                    "With --backend openai --base-url URL --model NAME instead: a model on an OpenAI-compatible "
                    "server (transformers serve, vLLM, TGI, llama.cpp, Ollama); the key comes from the "
                    "environment (OPENAI_API_KEY, or the variable named by --api-key-env), never from the line.")
    use.add_argument("variable", metavar="VAR", nargs="?", help="the notebook variable holding the agent")
    use.add_argument("--backend", choices=("openai",), help="create an agent for a served model: openai")
    use.add_argument("--base-url", metavar="URL", help="the server's API root, e.g. http://127.0.0.1:8000/v1")
    use.add_argument("-m", "--model", metavar="NAME", help="the model id the server serves")
    use.add_argument("--api-key-env", metavar="ENV", help="the environment variable holding the API key "
                                                           "(default OPENAI_API_KEY)")
    use.add_argument("--name", metavar="VAR", help="also store the created agent in this notebook variable")
    _add_decoding_options(use, "default ")
    commands["use"] = use

    ask = sub.add_parser("ask", help="send a one-line message (same options as the cell magic)",
                         description="Send the rest of the line as the user message. IPython reads a line "
                                     "that ends with ? as a help request: use the cell magic for such questions.")
    _add_generation_options(ask)
    ask.add_argument("message", nargs=argparse.REMAINDER, help="the message")
    commands["ask"] = ask

    history = sub.add_parser("history", help="show the conversation as a DataFrame",
                             description="Show the conversation so far, one row per turn.")
    history.add_argument("--name", metavar="VAR", help="also store the DataFrame in this notebook variable")
    commands["history"] = history

    commands["reset"] = sub.add_parser("reset", help="forget the conversation", description="Forget every turn.")

    memory = sub.add_parser("memory", help="show the memory readout",
                            description="Process and system memory, CUDA/MPS memory where present, and each loaded "
                                        "model's footprint (an agent that is not local: remote/unknown).")
    memory.add_argument("--name", metavar="VAR", help="also store the MemoryReadout in this notebook variable")
    commands["memory"] = memory

    commands["log"] = add_log_parser(sub)

    commands["unload"] = sub.add_parser("unload", help="free the session's model",
                                        description="Release the model; the next message loads it again.")
    commands["status"] = sub.add_parser("status", help="show the agent, its settings and the conversation length",
                                        description="Show the session's agent and settings.")
    return line, cell, commands


LINE_PARSER, CELL_PARSER, COMMAND_PARSERS = build_parsers()


#: What ``%midori help`` lists: each form of the magics and what it does, one line each.
COMMAND_SUMMARY = (
    ("%%midori [options]", "send the cell as the user message and stream the answer"),
    ("%midori load [options]", "load or switch the session's local model"),
    ("%midori use VAR", "use an agent from a notebook variable (or --backend openai: a served model)"),
    ("%midori ask MESSAGE", "send a one-line message (the line form of %%midori)"),
    ("%midori history", "the conversation as a DataFrame"),
    ("%midori reset", "forget the conversation"),
    ("%midori memory", "the memory readout"),
    ("%midori unload", "free the session's model"),
    ("%midori status", "the agent, its settings and the conversation length"),
    ("%midori log [options]", "the call log: recent calls, search, transcripts, conversations"),
)


def help_command(prog: str) -> str:
    """The command that shows the help of the parser named ``prog`` (``%%midori`` -> ``%%midori --help``)."""
    if prog == "%%midori":
        return "%%midori --help"
    command = prog.removeprefix("%midori").strip()
    return f"%midori help {command}" if command else "%midori help"


def command_list() -> str:
    """``%midori help``: the commands in a few lines, and how to get one command's options."""
    width = max(len(form) for form, _ in COMMAND_SUMMARY)
    lines = ["midori magics (chat with a local model, or any Midori protocol agent, from notebook cells):"]
    lines += [f"  {form.ljust(width)}  {what}" for form, what in COMMAND_SUMMARY]
    lines.append("Options of one command: %midori help COMMAND (or %midori COMMAND --help); of the cell magic: "
                 "%%midori --help; everything: %midori help all.")
    return "\n".join(lines)


def command_help(topic: str) -> str:
    """The short help of one command (``cell`` or ``%%midori``: the cell magic); ``UsageError`` for
    a topic that is not a command."""
    if topic in ("cell", "%%midori", "midori"):
        return CELL_PARSER.format_help()
    if topic in COMMAND_PARSERS:
        return COMMAND_PARSERS[topic].format_help()
    raise UsageError(f"%midori help: no command {topic!r}: expected cell, all or one of {', '.join(COMMAND_PARSERS)}")


def full_help() -> str:
    """Help for the cell magic and every line command (``%midori help all`` and ``%midori?``)."""
    parts = [command_list(), ""]
    for parser in (CELL_PARSER, *COMMAND_PARSERS.values()):
        parts += ["=" * 72, parser.format_help()]
    return "\n".join(parts)


# --------------------------------------------------------------------------- interpolation and splitting

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\}")


def interpolate(text: str, namespace: dict[str, Any]) -> str:
    """Replace ``{name}`` / ``{name.attr}`` with values from ``namespace``; ``{{`` and ``}}`` give braces.

    Other braces (``{"a": 1}``) are left alone. An unknown name raises ``UsageError``.
    """
    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name, *attributes = match.group(1).split(".")
        if name not in namespace:
            raise UsageError(f"%%midori: {{{name}}} names no variable in the notebook; define it, write "
                             f"{{{{{name}}}}} for literal braces, or pass --raw")
        value = namespace[name]
        for attribute in attributes:
            try:
                value = getattr(value, attribute)
            except AttributeError:
                raise UsageError(f"%%midori: {{{match.group(1)}}}: {type(value).__name__} has no attribute "
                                 f"{attribute!r}") from None
        return str(value)

    return _FIELD.sub(replace, text)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; values are read as JSON when they are JSON, else kept as text."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"%midori load: --set {item!r} is not KEY=VALUE (e.g. --set repetition_penalty=1.2)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def split_line(line: str) -> list[str]:
    """The words of a magic's line, shell-style (a quoting error is a ``UsageError``)."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%midori: cannot split the options ({exc}); check the quotes") from None


__all__ = ["CELL_PARSER", "COMMAND_PARSERS", "COMMAND_SUMMARY", "CompactHelpFormatter", "HELP_WIDTH", "HelpShown",
           "LINE_PARSER", "MagicParser", "build_parsers", "command_help", "command_list", "full_help", "help_command",
           "interpolate", "parse_set", "split_line"]
