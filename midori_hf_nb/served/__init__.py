"""Agents on OpenAI-compatible servers: the same protocol, streams and statistics as the local
agent, for a model served elsewhere (``transformers serve``, vLLM on a GPU cluster, TGI, a
llama.cpp server, Ollama, OpenAI).

- :mod:`.agent`: :class:`OpenAICompatibleAgent`;
- :mod:`.config`: :class:`OpenAIConfig` and :class:`ApiKey` (a key that never shows itself);
- :mod:`.request`: payload and overrides to a request body;
- :mod:`.stream`: :class:`ServedStream`, the streamed answer as typed events;
- :mod:`.errors`: one error class per way a call fails;
- :mod:`.local_server`: start and stop ``transformers serve`` on this machine.

The ``openai`` client (the ``openai`` extra) is imported on the first call only.
"""

from .agent import OpenAICompatibleAgent
from .config import ApiKey, OpenAIConfig
from .errors import (
    ServedAgentError,
    ServerAuthError,
    ServerRequestError,
    ServerTimeoutError,
    ServerUnreachableError,
    UnknownModelError,
)
from .stream import ServedStream

__all__ = ["ApiKey", "OpenAICompatibleAgent", "OpenAIConfig", "ServedAgentError", "ServedStream", "ServerAuthError",
           "ServerRequestError", "ServerTimeoutError", "ServerUnreachableError", "UnknownModelError"]
