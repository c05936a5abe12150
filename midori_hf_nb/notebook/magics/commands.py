"""The ``%midori`` / ``%%midori`` magic commands and the extension's entry points."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ...log.context import context as log_context
from ...log.record import new_id
from ..agent_calls import agent_model_name, is_local_agent, require_agent
from ..conversation import count_tokens
from .log_command import run_log_command
from .parsers import CELL_PARSER, COMMAND_PARSERS, HelpShown, command_help, command_list, full_help, interpolate, \
    split_line
from .session import MidoriSession, load_config, message_overrides


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (bad values, missing models): shown without traceback."""
    from ...config import ConfigError
    from ...prompting import ContextWindowError
    from ...sources import ModelSourceError

    errors: list[type[BaseException]] = [ConfigError, ContextWindowError, ModelSourceError]
    engine = sys.modules.get("midori_hf_nb.engine")
    if engine is not None:
        errors += [engine.DeviceError, engine.QuantizationError]
    return tuple(errors)


_ACTIVE: "MidoriMagics | None" = None

def cell_help_transform(lines: list[str]) -> list[str]:
    """An IPython input transformer (``input_transformers_cleanup``): a cell that is only a
    ``%%midori`` line with ``-h``/``--help`` becomes ``%midori help cell`` (IPython refuses a cell
    magic with an empty body before the magic runs); any other cell is left as it is."""
    text = "".join(lines).strip()
    words = text.split()
    if "\n" in text or not words or words[0] != "%%midori" or not {"-h", "--help"} & set(words[1:]):
        return lines
    return ["get_ipython().run_line_magic('midori', 'help cell')\n"]


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
                self._send(CELL_PARSER.parse_args(split_line(line)), cell)
        except HelpShown:
            return None
        except _user_errors() as exc:
            raise UsageError(str(exc)) from None
        return None

    midori.__doc__ = full_help()

    # ------------------------------------------------------------------ line commands

    def _line(self, line: str) -> None:
        argv = split_line(line)
        if argv and argv[0] in ("-h", "--help"):
            print(command_list())
            return
        if not argv:
            raise UsageError("%midori: a command is needed: " + ", ".join(COMMAND_PARSERS)
                             + "\nRun `%midori help` for the list, or use %%midori to send a cell.")
        if argv[0] not in COMMAND_PARSERS:
            raise UsageError(f"%midori: unknown command {argv[0]!r}: expected one of {', '.join(COMMAND_PARSERS)}\n"
                             "Run `%midori help` for the list.")
        command = argv[0]
        args = COMMAND_PARSERS[command].parse_args(argv[1:])
        getattr(self, f"_cmd_{command}")(args)

    def _cmd_help(self, args: argparse.Namespace) -> None:
        topic = args.topic
        if topic is None:
            print(command_list())
        elif topic == "all":
            print(full_help())
        else:
            print(command_help(topic))

    def _cmd_load(self, args: argparse.Namespace) -> None:
        from ...agent import HuggingFaceLocalAgent
        from ...protocol import make_payload
        from ..aio import run

        session = self.session
        config, new_options = load_config(session.base_config(), args)  # refused here: nothing loaded yet
        agent = HuggingFaceLocalAgent.from_config(config)
        run(agent.load())
        if new_options:  # a value generate() refuses is refused now, not in every later cell
            try:
                run(agent.invoke(make_payload("Hi"), max_new_tokens=1))
            except Exception as exc:
                run(agent.unload_model())
                given = ", ".join(f"{k}={v!r}" for k, v in new_options.items())
                raise UsageError(f"%midori load: --set {given} is not allowed: generate() refused it "
                                 f"({type(exc).__name__}: {exc}); the session keeps its settings") from None
        session.release()
        session.set_agent(agent, owned=True)
        if args.system is not None:
            session.system = args.system
        fp = agent.loaded_model.footprint()
        print(f"Loaded {config.model} on {fp['device']} ({fp['dtype']}, quantization {fp['quantization']}): "
              f"{fp['parameters'] / 1e6:.1f}M parameters, {fp['bytes'] / 2**20:.0f} MiB; "
              f"max_new_tokens={config.max_new_tokens}, "
              + ("greedy" if config.greedy else f"temperature={config.temperature}") + ".")

    def _cmd_use(self, args: argparse.Namespace) -> None:
        if args.backend is not None:
            self._use_served(args)
            return
        served_options = [f"--{k.replace('_', '-')}" for k in ("base_url", "model", "api_key_env", "name",
                                                                 "max_new_tokens", "temperature")
                          if getattr(args, k) is not None] + (["--greedy"] if args.greedy else [])
        if served_options:
            raise UsageError(f"%midori use: {', '.join(served_options)} go with --backend openai "
                             "(e.g. %midori use --backend openai --base-url URL --model NAME)")
        name = args.variable
        if name is None:
            raise UsageError("%midori use: expected a notebook variable holding an agent, or --backend openai "
                             "--base-url URL --model NAME")
        if name not in self.shell.user_ns:
            raise UsageError(f"%midori use: {name!r} names no variable in the notebook: expected a variable "
                             "holding an agent (e.g. agent = HuggingFaceLocalAgent(...))")
        agent = self.shell.user_ns[name]
        try:
            require_agent(agent, f"%midori use {name}")
        except TypeError as exc:
            raise UsageError(str(exc)) from None
        if agent is not self.session.agent:
            self.session.release()
            self.session.set_agent(agent, owned=False)
        where = "in this process" if is_local_agent(agent) else "not in this process"
        print(f"Using {name} ({type(agent).__name__}, model {agent_model_name(agent)}, {where}) for the "
              "session's messages.")

    def _use_served(self, args: argparse.Namespace) -> None:
        """``%midori use --backend openai --base-url URL --model NAME``: a served model for the session."""
        import os

        from ...config import ConfigError
        from ...served import OpenAICompatibleAgent

        if args.variable is not None:
            raise UsageError(f"%midori use: give a variable ({args.variable!r}) or --backend, not both")
        if not args.model:
            raise UsageError("%midori use --backend openai: --model NAME is required (the model id the server "
                             "serves; GET /v1/models lists them)")
        key = None
        if args.api_key_env:
            key = os.environ.get(args.api_key_env)
            if not key:
                raise UsageError(f"%midori use: the environment variable {args.api_key_env!r} (--api-key-env) is "
                                 "not set or empty")
        options: dict[str, Any] = {}
        if args.max_new_tokens is not None:
            options["max_new_tokens"] = args.max_new_tokens
        if args.greedy:
            options["do_sample"] = False
        elif args.temperature is not None:
            options.update(temperature=args.temperature, do_sample=args.temperature > 0)
        try:
            agent = OpenAICompatibleAgent(model=args.model, base_url=args.base_url, api_key=key, **options)
        except ConfigError as exc:
            raise UsageError(f"%midori use: {exc}") from None
        self.session.release()
        self.session.set_agent(agent, owned=True)
        if args.name:
            self.shell.user_ns[args.name] = agent
        print(f"Using {agent_model_name(agent)} on the server at {agent.base_url} (OpenAICompatibleAgent, not in "
              "this process) for the session's messages.")

    def _cmd_ask(self, args: argparse.Namespace) -> None:
        self._send(args, " ".join(args.message))

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
        self.session.conversation_id = new_id()  # a new conversation in the call log
        print(f"Conversation cleared ({count} turns forgotten).")

    def _cmd_log(self, args: argparse.Namespace) -> None:
        run_log_command(args, self.shell)

    def _cmd_memory(self, args: argparse.Namespace) -> None:
        from IPython.display import display

        from ..memory import memory_readout

        readout = memory_readout(self.session.agent)
        if args.name:
            self.shell.user_ns[args.name] = readout
        display(readout)

    def _cmd_unload(self, args: argparse.Namespace) -> None:
        from ..aio import run
        from ..memory import format_bytes, memory_readout

        agent = self.session.agent
        if agent is not None and not is_local_agent(agent):
            unload = getattr(agent, "unload_model", None)
            if callable(unload):
                run(unload())
            print(f"Asked {agent_model_name(agent)} to unload its model; its memory is not in this process.")
            return
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
        from ...served import OpenAICompatibleAgent

        session = self.session
        agent = session.agent
        if agent is None:
            print("No agent yet: the first %%midori uses the offline default model.")
        elif is_local_agent(agent):
            c = agent.config
            print(f"{agent!r}\n  dtype={c.torch_dtype}, quantization={c.quantization or 'none'}, "
                  f"max_new_tokens={c.max_new_tokens}, "
                  + ("greedy" if c.greedy else f"temperature={c.temperature}, top_p={c.top_p}, top_k={c.top_k}")
                  + f", context_window={c.context_window}")
        elif isinstance(agent, OpenAICompatibleAgent):
            c = agent.config
            print(f"{agent!r}\n  served: the model's memory is on the server, not in this process; "
                  f"max_new_tokens={c.max_new_tokens}, "
                  + ("greedy" if c.greedy else f"temperature={c.temperature}, top_p={c.top_p}")
                  + f", timeout={c.timeout} s")
        else:
            print(f"{type(agent).__name__} (model {agent_model_name(agent)}): not a local agent; its settings are "
                  "its own and its model's memory is not in this process")
        print(f"  conversation: {len(session.conversation)} turns; system prompt: {session.system!r}")

    # ------------------------------------------------------------------ sending

    def _send(self, args: argparse.Namespace, text: str) -> None:
        from ...protocol import make_payload
        from ..aio import run
        from ..display import ResponseView
        from ..streaming import LiveView, display_stream

        session = self.session
        message = (text if args.raw else interpolate(text, self.shell.user_ns)).strip()
        if not message:
            raise UsageError("%%midori: the message is empty: write it in the cell body, below the %%midori line")
        overrides = message_overrides(args, session.overrides, self.shell.user_ns)  # refused before anything loads
        throttle = session.throttle if args.throttle is None else args.throttle
        if not throttle >= 0:
            raise UsageError(f"%%midori: --throttle {throttle} is not allowed: expected seconds >= 0")
        agent = session.ensure_agent()
        if args.no_stream and is_local_agent(agent) and not agent.is_loaded:  # streamed: the live view shows the load
            run(agent.load())
        sent_at = time.time()
        system = session.system if args.system is None else args.system
        use_memory = not args.no_memory
        if use_memory:
            payload = session.conversation.payload(message, system)
        else:
            payload = make_payload(message, system, session_id=session.conversation.session_id)
        with log_context(surface="magic", conversation_id=session.conversation_id if use_memory else None):
            if args.no_stream:
                from IPython.display import display

                response = run(agent.invoke(payload, **overrides))
                display(ResponseView(response, show_thinking=not args.hide_thinking, markdown=not args.plain,
                                     probs=args.probs or False))
                session.last_display = None
            else:
                view = LiveView(throttle=throttle, show_thinking=not args.hide_thinking, markdown=not args.plain,
                                probs=args.probs or False)
                response = display_stream(agent, payload, view=view, **overrides)
                session.last_display = view.stats
        if use_memory:
            session.conversation.add_exchange(message, response, user_tokens=count_tokens(agent, message),
                                              sent_at=sent_at)
        session.last_response = response
        if args.name:
            self.shell.user_ns[args.name] = response


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%midori``/``%%midori`` and the rich display of ``AgentResponse``."""
    global _ACTIVE
    from ..display import register_formatters

    if _ACTIVE is not None and _ACTIVE.shell is ipython:
        return  # already loaded in this shell
    magics = MidoriMagics(ipython)
    ipython.register_magics(magics)
    if cell_help_transform not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(cell_help_transform)
    register_formatters(ipython)
    _ACTIVE = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and the formatter, and release the model of an agent the session created."""
    global _ACTIVE
    from ..display import unregister_formatters
    from ..ipython_compat import unregister_magics

    unregister_magics(ipython, "midori", "MidoriMagics")
    unregister_formatters(ipython)
    if cell_help_transform in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(cell_help_transform)
    if _ACTIVE is not None and _ACTIVE.shell is ipython:
        _ACTIVE.session.release()
        _ACTIVE = None


__all__ = ["MidoriMagics", "cell_help_transform", "current_session", "load_ipython_extension",
           "unload_ipython_extension"]
