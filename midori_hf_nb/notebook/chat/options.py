"""The checks of :class:`~.panel.ChatPanel`'s options."""

from __future__ import annotations

from typing import Any


def check_agent(agent: Any) -> None:
    """Refuse an ``agent`` that is not a Midori protocol agent (it needs an ``invoke`` method)."""
    if agent is None or not callable(getattr(agent, "invoke", None)):
        raise ValueError(f"ChatPanel(agent={agent!r:.80}) is not allowed: expected a Midori protocol agent (an object "
                         "with async invoke(payload), such as HuggingFaceLocalAgent or OpenAICompatibleAgent)")


def check_panel_options(*, agent: Any, tools: Any, execute_tools: Any, max_tool_steps: Any, throttle: Any,
                        system_prompt: Any, enter_sends: Any) -> None:
    """Refuse options of :class:`ChatPanel` that are not allowed, naming each one (the agent first)."""
    check_agent(agent)
    if not isinstance(execute_tools, bool):
        raise ValueError(f"ChatPanel(execute_tools={execute_tools!r}) is not allowed: expected True or False")
    if execute_tools and not tools:
        raise ValueError("ChatPanel(execute_tools=True) needs tools=[...]: the tools that may run")
    if isinstance(max_tool_steps, bool) or not isinstance(max_tool_steps, int) or max_tool_steps < 1:
        raise ValueError(f"ChatPanel(max_tool_steps={max_tool_steps!r}) is not allowed: expected a positive integer")
    if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or throttle < 0:
        raise ValueError(f"ChatPanel(throttle={throttle!r}) is not allowed: expected seconds >= 0")
    if not isinstance(system_prompt, str):
        raise ValueError(f"ChatPanel(system_prompt=...) expects a string, got {type(system_prompt).__name__}")
    if not isinstance(enter_sends, bool):
        raise ValueError(f"ChatPanel(enter_sends={enter_sends!r}) is not allowed: expected True or False")


__all__ = ["check_agent", "check_panel_options"]
