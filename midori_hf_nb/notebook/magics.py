"""``%load_ext midori_hf_nb``: the ``%midori`` line magic and the ``%%midori`` cell magic.

Quick start::

    %load_ext midori_hf_nb

    %%midori --max-new-tokens 64
    What is the capital of France?

The cell is sent as the user message and the answer streams into the output. With no agent
loaded, the first ``%%midori`` uses the offline default model. Conversation memory across
cells is on by default. ``%midori help`` (or ``--help`` after any command) lists every
option; bad options print a usage error, not a traceback.

Line commands: ``help``, ``load``, ``ask``, ``history``, ``reset``, ``memory``, ``unload``,
``status``. The session (agent, conversation, defaults) is :func:`current_session`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from .conversation import Conversation, count_tokens
from .streaming import DEFAULT_THROTTLE

DTYPE_CHOICES = ("auto", "float16", "float32", "bfloat16")


class _HelpShown(Exception):
    """argparse printed help (``--help``): nothing else to do."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as IPython ``UsageError`` (one clear line, no traceback)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}\nusage: {self.format_usage().removeprefix('usage: ').strip()}\n"
                         "Run `%midori help` for every option.")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message)
        raise _HelpShown()


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
    parser.add_argument("--name", metavar="VAR", help="store the AgentResponse in this notebook variable")
    parser.add_argument("--no-memory", action="store_true",
                        help="send without the conversation so far, and do not record this exchange")
    parser.add_argument("--no-stream", action="store_true",
                        help="wait for the whole answer, then show it (no live updates)")
    parser.add_argument("--raw", action="store_true", help="send the text as is: no {variable} interpolation")
    parser.add_argument("--hide-thinking", action="store_true", help="do not show the model's reasoning")
    parser.add_argument("--throttle", type=float, metavar="SECONDS",
                        help=f"seconds between display updates (default {DEFAULT_THROTTLE})")


def _build_parsers() -> tuple[_Parser, _Parser, dict[str, _Parser]]:
    cell = _Parser(
        prog="%%midori", add_help=True,
        description="Send the cell body as the user message and stream the answer into the output. "
                    "{name} in the body is replaced by the notebook variable `name` ({{ and }} for literal braces).",
    )
    _add_generation_options(cell)

    line = _Parser(prog="%midori", add_help=True, description="Manage the notebook's agent and conversation.")
    sub = line.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands: dict[str, _Parser] = {}

    commands["help"] = sub.add_parser("help", help="show this help (or `help COMMAND`)",
                                      description="Show help for every command, or for one.")
    commands["help"].add_argument("topic", nargs="?", help="a command name, or `cell` for the cell magic")

    load = sub.add_parser(
        "load", help="load or switch the session's agent",
        description="Load a model (or switch model or settings). Options not given keep their current values; "
                    "the first load starts from the offline default model and the core defaults.")
    load.add_argument("-m", "--model", metavar="MODEL",
                      help="hub id, local model directory, .gguf file, or offline:smollm2-135m-instruct (default)")
    load.add_argument("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps")
    load.add_argument("--dtype", choices=DTYPE_CHOICES, help="weights dtype (auto: float32 on CPU)")
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
                      help="a further generate() option, e.g. --set repetition_penalty=1.2 (repeatable)")
    load.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")
    load.add_argument("--no-progress", action="store_true", help="no progress bars while loading")
    commands["load"] = load

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
                                        "model's footprint.")
    memory.add_argument("--name", metavar="VAR", help="also store the MemoryReadout in this notebook variable")
    commands["memory"] = memory

    commands["unload"] = sub.add_parser("unload", help="free the session's model",
                                        description="Release the model; the next message loads it again.")
    commands["status"] = sub.add_parser("status", help="show the agent, its settings and the conversation length",
                                        description="Show the session's agent and settings.")
    return line, cell, commands


LINE_PARSER, CELL_PARSER, COMMAND_PARSERS = _build_parsers()


def full_help() -> str:
    """Help for the cell magic and every line command."""
    parts = [
        "midori magics: chat with a local Hugging Face model from notebook cells.",
        "",
        "%%midori [options]      the cell body is the user message; the answer streams into the output",
        "%midori COMMAND [...]   " + ", ".join(COMMAND_PARSERS),
        "",
        "=" * 72,
        CELL_PARSER.format_help(),
    ]
    for name, parser in COMMAND_PARSERS.items():
        parts += ["=" * 72, parser.format_help()]
    return "\n".join(parts)


# --------------------------------------------------------------------------- interpolation

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


def _parse_set(items: list[str]) -> dict[str, Any]:
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


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%midori: cannot split the options ({exc}); check the quotes") from None


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (bad values, missing models): shown without traceback."""
    from ..config import ConfigError
    from ..prompting import ContextWindowError
    from ..sources import ModelSourceError

    errors: list[type[BaseException]] = [ConfigError, ContextWindowError, ModelSourceError]
    import sys

    engine = sys.modules.get("midori_hf_nb.engine")
    if engine is not None:
        errors += [engine.DeviceError, engine.QuantizationError]
    return tuple(errors)


# --------------------------------------------------------------------------- the session


class MidoriSession:
    """The state behind the magics: the agent, the conversation and the defaults.

    Attributes:
        agent: the :class:`~midori_hf_nb.HuggingFaceLocalAgent`, or None before first use.
        conversation: the :class:`~midori_hf_nb.notebook.Conversation` sent as memory.
        system: the default system prompt ('' lets the model's template decide).
        overrides: extra per-call generation overrides for every message (e.g.
            ``{"logits_processor": [...]}``); options given in a cell win.
        throttle: default seconds between display updates.
        last_response: the most recent response.
    """

    def __init__(self) -> None:
        self.agent: Any = None
        self.conversation = Conversation(session_id="notebook")
        self.system = ""
        self.overrides: dict[str, Any] = {}
        self.throttle = DEFAULT_THROTTLE
        self.last_response: Any = None

    def base_config(self) -> Any:
        """The agent's configuration, or the one the first message would use."""
        from .. import DEFAULT_MODEL
        from ..config import HuggingFaceConfig

        return self.agent.config if self.agent is not None else HuggingFaceConfig(model=DEFAULT_MODEL)

    def ensure_agent(self) -> Any:
        """The session's agent, creating one on the offline default model on first use."""
        if self.agent is None:
            from .. import DEFAULT_MODEL, HuggingFaceLocalAgent

            self.agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL)
            print(f"Using the offline default model ({DEFAULT_MODEL}); `%midori load --model ...` picks another.")
        return self.agent


_ACTIVE: "MidoriMagics | None" = None


def current_session() -> MidoriSession | None:
    """The session of the loaded extension (None before ``%load_ext midori_hf_nb``)."""
    return _ACTIVE.session if _ACTIVE is not None else None


@magics_class
class MidoriMagics(Magics):
    """``%midori`` and ``%%midori``; see :func:`full_help`."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session = MidoriSession()

    @line_cell_magic
    def midori(self, line: str, cell: str | None = None) -> None:
        try:
            if cell is None:
                self._line(line)
            else:
                self._cell(line, cell)
        except _HelpShown:
            return None
        except _user_errors() as exc:
            raise UsageError(str(exc)) from None
        return None

    midori.__doc__ = full_help()

    # ------------------------------------------------------------------ line commands

    def _line(self, line: str) -> None:
        argv = _split(line)
        if argv and argv[0] in ("-h", "--help"):
            print(full_help())
            return
        if not argv:
            raise UsageError("%midori: a command is needed: " + ", ".join(COMMAND_PARSERS)
                             + "\nRun `%midori help` for every option, or use %%midori to send a cell.")
        if argv[0] not in COMMAND_PARSERS:
            raise UsageError(f"%midori: unknown command {argv[0]!r}: expected one of {', '.join(COMMAND_PARSERS)}\n"
                             "Run `%midori help` for every option.")
        command = argv[0]
        args = COMMAND_PARSERS[command].parse_args(argv[1:])
        getattr(self, f"_cmd_{command}")(args)

    def _cmd_help(self, args: argparse.Namespace) -> None:
        topic = args.topic
        if topic is None:
            print(full_help())
        elif topic in ("cell", "%%midori"):
            print(CELL_PARSER.format_help())
        elif topic in COMMAND_PARSERS:
            print(COMMAND_PARSERS[topic].format_help())
        else:
            raise UsageError(f"%midori help: no topic {topic!r}: expected cell or one of {', '.join(COMMAND_PARSERS)}")

    def _cmd_load(self, args: argparse.Namespace) -> None:
        from .. import HuggingFaceLocalAgent
        from .aio import run

        session = self.session
        old = session.agent
        base = session.base_config()
        changes: dict[str, Any] = {}
        for field, value in (("model", args.model), ("device", args.device), ("torch_dtype", args.dtype),
                             ("max_new_tokens", args.max_new_tokens), ("temperature", args.temperature),
                             ("top_p", args.top_p), ("top_k", args.top_k), ("context_window", args.context_window)):
            if value is not None:
                changes[field] = value
        if args.greedy:
            changes["do_sample"] = False
        elif args.temperature is not None:
            changes["do_sample"] = args.temperature > 0
        if args.load_in_8bit or args.load_in_4bit or args.no_quantization:
            changes["load_in_8bit"], changes["load_in_4bit"] = bool(args.load_in_8bit), bool(args.load_in_4bit)
        if args.trust_remote_code:
            changes["trust_remote_code"] = True
        if args.no_progress:
            changes["progress"] = False
        if args.set:
            changes["generation_kwargs"] = {**base.generation_kwargs, **_parse_set(args.set)}
        config = base.replace(**changes)  # ConfigError names the field -> UsageError
        agent = HuggingFaceLocalAgent.from_config(config)
        run(agent.load())
        if old is not None:
            run(old.unload_model())
        session.agent = agent
        if args.system is not None:
            session.system = args.system
        fp = agent.loaded_model.footprint()
        print(f"Loaded {config.model} on {fp['device']} ({fp['dtype']}, quantization {fp['quantization']}): "
              f"{fp['parameters'] / 1e6:.1f}M parameters, {fp['bytes'] / 2**20:.0f} MiB; "
              f"max_new_tokens={config.max_new_tokens}, "
              + ("greedy" if config.greedy else f"temperature={config.temperature}") + ".")

    def _cmd_ask(self, args: argparse.Namespace) -> None:
        message = " ".join(args.message)
        self._send(args, message)

    def _cmd_history(self, args: argparse.Namespace) -> None:
        from IPython.display import display

        frame = self.session.conversation.frame()
        if args.name:
            self.shell.user_ns[args.name] = frame
        if frame.empty:
            print("The conversation is empty.")
        display(frame)

    def _cmd_reset(self, args: argparse.Namespace) -> None:
        count = self.session.conversation.reset()
        print(f"Conversation cleared ({count} turns forgotten).")

    def _cmd_memory(self, args: argparse.Namespace) -> None:
        from IPython.display import display

        from .memory import memory_readout

        readout = memory_readout()
        if args.name:
            self.shell.user_ns[args.name] = readout
        display(readout)

    def _cmd_unload(self, args: argparse.Namespace) -> None:
        from .aio import run
        from .memory import format_bytes, memory_readout

        agent = self.session.agent
        if agent is None or not agent.is_loaded:
            print("No model is loaded.")
            return
        before = memory_readout().rss_bytes
        run(agent.unload_model())
        after = memory_readout()
        print(f"Unloaded {agent.config.model}: resident memory {format_bytes(before)} -> "
              f"{format_bytes(after.rss_bytes)}; models still loaded: {len(after.models)}. "
              "The next message loads it again.")

    def _cmd_status(self, args: argparse.Namespace) -> None:
        session = self.session
        agent = session.agent
        if agent is None:
            print("No agent yet: the first %%midori uses the offline default model.")
        else:
            c = agent.config
            print(f"{agent!r}\n  dtype={c.torch_dtype}, quantization={c.quantization or 'none'}, "
                  f"max_new_tokens={c.max_new_tokens}, "
                  + ("greedy" if c.greedy else f"temperature={c.temperature}, top_p={c.top_p}, top_k={c.top_k}")
                  + f", context_window={c.context_window}")
        print(f"  conversation: {len(session.conversation)} turns; system prompt: {session.system!r}")

    # ------------------------------------------------------------------ sending

    def _cell(self, line: str, cell: str) -> None:
        args = CELL_PARSER.parse_args(_split(line))
        self._send(args, cell)

    def _send(self, args: argparse.Namespace, text: str) -> None:
        from ..protocol import make_payload
        from .aio import run
        from .display import ResponseView
        from .streaming import display_stream

        session = self.session
        message = (text if args.raw else interpolate(text, self.shell.user_ns)).strip()
        if not message:
            raise UsageError("%%midori: the message is empty: write it in the cell body, below the %%midori line")
        overrides = dict(session.overrides)
        if args.max_new_tokens is not None:
            overrides["max_new_tokens"] = args.max_new_tokens
        if args.greedy:
            overrides["greedy"] = True
        elif args.temperature is not None:
            overrides["temperature"] = args.temperature
            overrides["do_sample"] = args.temperature > 0
        if args.seed is not None:
            overrides["seed"] = args.seed
        throttle = session.throttle if args.throttle is None else args.throttle
        if throttle < 0:
            raise UsageError(f"%%midori: --throttle {throttle} is not allowed: expected seconds >= 0")
        checked = {k: overrides[k] for k in ("max_new_tokens", "temperature") if k in overrides}
        if checked:  # bad values are usage errors, reported before anything loads
            session.base_config().replace(**checked)
        agent = session.ensure_agent()
        if not agent.is_loaded:  # load first, so progress bars come before the answer
            run(agent.load())
        system = session.system if args.system is None else args.system
        use_memory = not args.no_memory
        if use_memory:
            payload = session.conversation.payload(message, system)
        else:
            payload = make_payload(message, system, session_id=session.conversation.session_id)
        if args.no_stream:
            from IPython.display import display

            response = run(agent.invoke(payload, **overrides))
            display(ResponseView(response, show_thinking=not args.hide_thinking))
        else:
            response = display_stream(agent, payload, throttle=throttle, show_thinking=not args.hide_thinking,
                                      **overrides)
        if use_memory:
            session.conversation.add_exchange(message, response, user_tokens=count_tokens(agent, message))
        session.last_response = response
        if args.name:
            self.shell.user_ns[args.name] = response


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%midori``/``%%midori`` and the rich display of ``AgentResponse``."""
    global _ACTIVE
    from .display import register_formatters

    if _ACTIVE is not None and _ACTIVE.shell is ipython:
        return  # already loaded in this shell
    magics = MidoriMagics(ipython)
    ipython.register_magics(magics)
    register_formatters(ipython)
    _ACTIVE = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and the formatter, and release the session's model."""
    global _ACTIVE
    from .aio import run
    from .display import unregister_formatters

    from .ipython_compat import unregister_magics

    unregister_magics(ipython, "midori", "MidoriMagics")
    unregister_formatters(ipython)
    if _ACTIVE is not None and _ACTIVE.shell is ipython:
        agent = _ACTIVE.session.agent
        if agent is not None and agent.is_loaded:
            run(agent.unload_model())
        _ACTIVE = None


__all__ = [
    "CELL_PARSER",
    "LINE_PARSER",
    "MidoriMagics",
    "MidoriSession",
    "current_session",
    "full_help",
    "interpolate",
    "load_ipython_extension",
    "unload_ipython_extension",
]
