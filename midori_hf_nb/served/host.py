"""What a served stream needs from the agent that runs it: a typed seam, so :mod:`.stream` does
not depend on the agent class (any object with these public methods can host a served stream)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..protocol import AgentPayload
    from .config import OpenAIConfig
    from .errors import ServedAgentError
    from .request import ServedCallSettings


class ServedHost(Protocol):
    """The public methods :class:`~.stream.ServedStream` calls on
    :class:`~midori_hf_nb.served.agent.OpenAICompatibleAgent`."""

    @property
    def config(self) -> "OpenAIConfig": ...

    def client(self) -> Any: ...

    def resolve_settings(self, overrides: dict[str, Any] | None = None) -> "ServedCallSettings": ...

    def request_body(self, payload: "AgentPayload", call: "ServedCallSettings",
                     schemas: list[dict] | None = None) -> dict[str, Any]: ...

    async def explain(self, exc: BaseException, *, check_model: bool = True) -> "ServedAgentError": ...
