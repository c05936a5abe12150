"""The local agent, one concern per module:

- :mod:`.local`: :class:`HuggingFaceLocalAgent`, the protocol on a local transformers model;
- :mod:`.stream`: :class:`AgentStream`, an async iterator over one generation;
- :mod:`.tool_loop`: :class:`ToolLoopStream`, the opt-in tool execution loop as a stream;
- :mod:`.live`: the generation thread feeding an asyncio queue;
- :mod:`.responses`: a finished generation to an ``AgentResponse`` with typed statistics;
- :mod:`.host`: :class:`GenerationHost`, what a stream needs from its agent (a typed seam).
"""

from ..events import EVENT_KINDS, EventStream, StreamEvent
from .local import HuggingFaceLocalAgent
from .responses import native_parse
from .stream import AgentStream
from .tool_loop import ToolLoopStream

__all__ = ["EVENT_KINDS", "AgentStream", "EventStream", "HuggingFaceLocalAgent", "StreamEvent", "ToolLoopStream", "native_parse"]
