"""midori-hf-nb: run local Hugging Face language models in Jupyter, behind the Midori AI agent protocol.

The core (this package) never imports IPython; the notebook layer lives in
:mod:`midori_hf_nb.notebook`. ``%load_ext midori_hf_nb`` registers the ``%midori`` magics.
Importing this package is cheap: torch and transformers load with the first model.
"""

from __future__ import annotations

from typing import Any

from .agent import AgentStream, HuggingFaceLocalAgent, StreamEvent, ToolLoopStream
from . import compare  # the package, callable as compare(...) (see midori_hf_nb.compare)
from . import evaluate  # the package, callable as evaluate(...) (see midori_hf_nb.evaluate)
from .evaluate import Judge
from .config import ConfigError, HuggingFaceConfig
from .factory import get_agent, get_agent_from_config
from .integrity import CacheRepairWarning, CorruptModelError
from .parsing import extract_reasoning, parse_tool_calls
from .prompting import ContextWindowError
from .served import OpenAICompatibleAgent, OpenAIConfig, ServedAgentError
from .protocol import (
    AgentPayload,
    AgentResponse,
    MemoryEntryData,
    MidoriAiAgentProtocol,
    ReasoningEffort,
    make_payload,
)
from .sources import DEFAULT_MODEL, ModelSourceError
from .stats import ResponseStats, stats_of
from .tools import ToolSchemaError
from .validation import PayloadError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "AgentPayload",
    "AgentResponse",
    "AgentStream",
    "CacheRepairWarning",
    "ConfigError",
    "ContextWindowError",
    "CorruptModelError",
    "HuggingFaceConfig",
    "HuggingFaceLocalAgent",
    "Judge",
    "MemoryEntryData",
    "MidoriAiAgentProtocol",
    "ModelSourceError",
    "OpenAICompatibleAgent",
    "OpenAIConfig",
    "PayloadError",
    "ReasoningEffort",
    "ResponseStats",
    "ServedAgentError",
    "StreamEvent",
    "ToolLoopStream",
    "ToolSchemaError",
    "compare",
    "evaluate",
    "extract_reasoning",
    "get_agent",
    "get_agent_from_config",
    "load_ipython_extension",
    "make_payload",
    "parse_tool_calls",
    "stats_of",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext midori_hf_nb``: register the ``%midori`` / ``%%midori`` magics."""
    from .notebook.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext midori_hf_nb``."""
    from .notebook.magics import unload_ipython_extension as _unload

    _unload(ipython)
