"""Protocol agents that offer less than the local agent, to test the notebook layer's fallbacks (no model)."""

from __future__ import annotations

import asyncio

from midori_hf_nb import MidoriAiAgentProtocol
from midori_hf_nb.testing import ScriptedAgent


class InvokeOnlyAgent(MidoriAiAgentProtocol):
    """A protocol agent with no ``stream``: the views fall back to ``invoke``."""

    def __init__(self, reply: str, delay: float = 0.0) -> None:
        self.inner = ScriptedAgent(reply)
        self.delay = delay
        self.calls: list[dict] = []

    async def invoke(self, payload, **overrides):
        self.calls.append({"tools": None, **overrides})
        await asyncio.sleep(self.delay)
        return await self.inner.invoke(payload, **overrides)

    async def invoke_with_tools(self, payload, tools, **overrides):
        self.calls.append({"tools": [t.__name__ for t in tools], **overrides})
        return await self.inner.invoke_with_tools(payload, tools, **overrides)

    async def get_context_window(self):
        return 1024

    async def supports_streaming(self):
        return False


class PlainStreamAgent(InvokeOnlyAgent):
    """A protocol agent whose ``stream`` yields plain text pieces and takes no ``events``."""

    async def supports_streaming(self):
        return True

    async def stream(self, payload):
        for word in ("plain ", "text ", "pieces"):
            yield word
