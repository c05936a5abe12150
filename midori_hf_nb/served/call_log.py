"""What the call log records about a served call: the model and server, and every setting sent.

The API key is never part of it: the configuration's fields are read one by one, ``api_key``
left out, and the key itself travels with the record only so that the log's writer can remove
it from any text that carries it (a server's error message, a header put into the options).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import OpenAIConfig
    from .request import ServedCallSettings

#: configuration fields never recorded
NOT_RECORDED = ("api_key", "model", "base_url", "server_options")


def served_details(config: "OpenAIConfig", call: "ServedCallSettings | None") -> dict[str, Any]:
    """The model and settings fields of a served call's log row."""
    used = call.config if call is not None else config
    options = {f.name: getattr(used, f.name) for f in dataclasses.fields(used) if f.name not in NOT_RECORDED}
    sources = {}
    if call is not None:
        options.update(seed=call.seed, stop=call.stop, server_options=dict(call.server_options) or None,
                       greedy=call.greedy)
        sources = {f.name: ("call" if getattr(call.config, f.name) != getattr(config, f.name) else "agent")
                   for f in dataclasses.fields(config) if f.name not in NOT_RECORDED}
    else:
        options["server_options"] = dict(config.server_options) or None
    return {"model": config.model, "backend": "openai", "device": "remote", "base_url": config.server,
            "model_details": {"base_url": config.server, "model": config.model},
            "options": options, "option_sources": sources or None}


__all__ = ["NOT_RECORDED", "served_details"]
