"""``get_agent`` and ``get_agent_from_config``: the protocol's factory, for the Hugging Face backend
(a local model) and the OpenAI backend (a model on an OpenAI-compatible server)."""

from __future__ import annotations

import os
from typing import Any

from .agent import HuggingFaceLocalAgent
from .config import ConfigError, resolve_agent_settings
from .protocol import ReasoningEffort
from .served import OpenAICompatibleAgent
from .validation import validate_reasoning_effort

BACKENDS = ("huggingface", "openai")


def _reasoning(value: Any) -> ReasoningEffort | None:
    """A ``reasoning_effort`` argument or table as a :class:`ReasoningEffort`; a bad one raises ``ConfigError``."""
    return validate_reasoning_effort(value, "reasoning_effort", error=ConfigError)


async def _other_backend(backend: str, model: str, api_key: str | None, base_url: str | None, **kwargs: Any) -> Any:
    try:
        from midori_ai_agent_base import get_agent as base_get_agent  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            f"backend {backend!r} is not available: valid backends here are {', '.join(map(repr, BACKENDS))} "
            "(other backends need the midori-ai-agent-base package and their own backend package)"
        ) from None
    return await base_get_agent(backend=backend, model=model, api_key=api_key, base_url=base_url, **kwargs)


async def get_agent(backend: str, model: str, api_key: str | None = None, base_url: str | None = None,
                    **kwargs: Any) -> HuggingFaceLocalAgent | OpenAICompatibleAgent:
    """Create an agent (nothing is loaded or sent yet).

    ``backend="huggingface"``: ``api_key`` and ``base_url`` are ignored and ``kwargs`` go to
    :class:`HuggingFaceLocalAgent`. ``backend="openai"``: an :class:`OpenAICompatibleAgent` for
    ``model`` on the server at ``base_url`` (None: ``OPENAI_BASE_URL``, else OpenAI's API) with
    ``api_key`` (None: ``OPENAI_API_KEY``); ``kwargs`` are its options.
    """
    if backend not in BACKENDS:
        return await _other_backend(backend, model, api_key, base_url, **kwargs)
    if "reasoning_effort" in kwargs:
        kwargs["reasoning_effort"] = _reasoning(kwargs["reasoning_effort"])
    if backend == "openai":
        if not isinstance(model, str) or not model:
            raise ValueError("get_agent(backend='openai'): 'model' is required (the model id the server serves; "
                             "GET /v1/models lists them)")
        return OpenAICompatibleAgent(model=model, base_url=base_url, api_key=api_key, **kwargs)
    if model is None:
        raise ValueError("get_agent(backend='huggingface'): 'model' is required (a hub id, a local directory, "
                         "a .gguf file or midori_hf_nb.DEFAULT_MODEL)")
    return HuggingFaceLocalAgent(model=model, **kwargs)


async def get_agent_from_config(
    config_path: str | os.PathLike | None = None,
    backend: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    **kwargs: Any,
) -> HuggingFaceLocalAgent | OpenAICompatibleAgent:
    """Create an agent from a TOML file; explicit arguments win over the file, the file over defaults.

    For ``backend = "openai"`` the file gives ``base_url`` and ``api_key`` (or leave the key out
    and set ``OPENAI_API_KEY``: a key in a file is easy to share by mistake); a table
    ``[midori_ai_agent_base.openai]`` overrides the base section for that backend.

    Without ``config_path`` the nearest ``config.toml`` in the current directory or its parents
    is read (if there is none, only the explicit arguments are used). A missing file, invalid
    TOML or no ``model`` anywhere raise errors naming the file.
    """
    settings = resolve_agent_settings(config_path, backend, model, api_key, base_url, **kwargs)
    where = f"configuration file {str(settings.source)!r}" if settings.source else "the arguments (no config.toml found)"
    if not settings.model:
        raise ConfigError(
            f"no model given: set 'model' under [midori_ai_agent_base] in {where} or pass model=..."
        )
    extra = dict(settings.kwargs)
    if settings.reasoning_effort is not None:
        extra["reasoning_effort"] = settings.reasoning_effort
    try:
        return await get_agent(settings.backend, settings.model, settings.api_key, settings.base_url, **extra)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {where})") from exc
