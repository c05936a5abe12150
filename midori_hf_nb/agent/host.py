"""What a stream needs from the agent that runs it: a typed seam, so the stream modules do not
depend on the agent class (any object with these public methods can host a stream)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..config import HuggingFaceConfig
    from ..engine import LoadedModel
    from ..prompting import Prompt
    from ..protocol import AgentPayload
    from ..settings import CallSettings


class GenerationHost(Protocol):
    """The public methods :class:`~.stream.AgentStream` and :class:`~.tool_loop.ToolLoopStream` call."""

    @property
    def config(self) -> "HuggingFaceConfig": ...

    def resolve_settings(self, overrides: dict[str, Any] | None = None) -> "CallSettings": ...

    async def ensure_loaded(self) -> "LoadedModel": ...

    def reuse_key(self, payload: "AgentPayload") -> Hashable | None: ...

    def build_prompt(self, lm: "LoadedModel", payload: "AgentPayload", call: "CallSettings",
                     schemas: list[dict] | None = None, continuation: list[dict] | None = None) -> "Prompt": ...
