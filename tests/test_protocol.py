"""The protocol types, field for field as in protocol.md, and the package's public names."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re

import pytest

import midori_hf_nb
from midori_hf_nb import (
    AgentPayload,
    AgentResponse,
    HuggingFaceLocalAgent,
    MemoryEntryData,
    MidoriAiAgentProtocol,
    ReasoningEffort,
)

from .conftest import ROOT

MISSING = dataclasses.MISSING
#: The interface as the protocol document states it (test data, beside the reference adapter's documentation).
PROTOCOL = ROOT / "tests" / "data" / "protocol" / "protocol.md"


def fields_of(cls):
    return [(f.name, f.default if f.default is not MISSING else MISSING) for f in dataclasses.fields(cls)]


def documented_fields() -> dict[str, list]:
    """The data-model table of protocol.md: ``{class: [(field, default or MISSING)]}``."""
    table = {}
    for line in PROTOCOL.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 2 or not re.fullmatch(r"`\w+`", cells[0]):
            continue
        fields = []
        for spec in re.findall(r"`([^`]+)`", cells[1]):
            name, _, rest = spec.partition(":")
            _, equals, default = rest.rpartition(" = ")
            fields.append((name.strip(), ast.literal_eval(default.strip()) if equals else MISSING))
        table[cells[0].strip("`")] = fields
    return table


@pytest.mark.parametrize("cls", [MemoryEntryData, ReasoningEffort, AgentPayload, AgentResponse], ids=lambda c: c.__name__)
def test_dataclasses_match_the_protocol_document(cls):
    documented = documented_fields()
    assert set(documented) == {"MemoryEntryData", "ReasoningEffort", "AgentPayload", "AgentResponse"}
    assert fields_of(cls) == documented[cls.__name__]


def test_memory_entry_fields():
    assert fields_of(MemoryEntryData) == [
        ("role", MISSING), ("content", MISSING), ("timestamp", None), ("tool_calls", None), ("metadata", None)]


def test_reasoning_effort_fields():
    assert fields_of(ReasoningEffort) == [("effort", "low"), ("generate_summary", None), ("summary", None)]


def test_agent_payload_fields():
    assert fields_of(AgentPayload) == [
        ("user_message", MISSING), ("thinking_blob", MISSING), ("system_context", MISSING),
        ("user_profile", MISSING), ("tools_available", MISSING), ("session_id", MISSING),
        ("metadata", None), ("reasoning_effort", None), ("memory", None)]


def test_agent_response_fields():
    assert fields_of(AgentResponse) == [
        ("thinking", MISSING), ("response", MISSING), ("code", None), ("tool_calls", None), ("metadata", None)]


def test_protocol_is_abstract_with_async_methods():
    with pytest.raises(TypeError):
        MidoriAiAgentProtocol()  # type: ignore[abstract]
    for name in ("invoke", "invoke_with_tools", "get_context_window", "supports_streaming"):
        assert inspect.iscoroutinefunction(getattr(MidoriAiAgentProtocol, name)), name
        assert inspect.iscoroutinefunction(getattr(HuggingFaceLocalAgent, name)), name
    assert inspect.iscoroutinefunction(HuggingFaceLocalAgent.unload_model)
    assert issubclass(HuggingFaceLocalAgent, MidoriAiAgentProtocol)


@pytest.mark.parametrize("name", [
    "MemoryEntryData", "ReasoningEffort", "AgentPayload", "AgentResponse", "MidoriAiAgentProtocol",
    "HuggingFaceLocalAgent", "HuggingFaceConfig", "get_agent", "get_agent_from_config", "DEFAULT_MODEL",
    "parse_tool_calls", "extract_reasoning",
])
def test_public_names(name):
    assert name in midori_hf_nb.__all__
    assert getattr(midori_hf_nb, name) is not None


def test_context_window_and_streaming_flags():
    from .conftest import run

    agent = HuggingFaceLocalAgent(model="org/name", context_window=1234)
    assert run(agent.get_context_window()) == 1234
    assert run(agent.supports_streaming()) is True
    assert agent.is_loaded is False
