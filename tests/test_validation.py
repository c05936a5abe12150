"""Bad input is refused at the boundary: every error names the field, the value's type and what is allowed."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from midori_hf_nb import (
    AgentPayload,
    ConfigError,
    HuggingFaceConfig,
    HuggingFaceLocalAgent,
    MemoryEntryData,
    ReasoningEffort,
    get_agent_from_config,
    make_payload,
)
from midori_hf_nb.prompting import build_prompt
from midori_hf_nb.validation import (
    PayloadError,
    replace_lone_surrogates,
    validate_call_options,
    validate_payload,
)

from .conftest import run

LEVELS = "'none', 'minimal', 'low', 'medium', 'high'"


def with_fields(**fields):
    """A valid payload with ``fields`` set afterwards (as a caller's own code might)."""
    payload = make_payload("Hello", "Be brief.")
    for name, value in fields.items():
        setattr(payload, name, value)
    return payload


def memory(*entries):
    return with_fields(memory=list(entries))


OK = MemoryEntryData("user", "hi")

# (id, the payload, the exception's field, the type named, what is allowed)
PAYLOAD_ROWS = [
    ("message-none", with_fields(user_message=None), "AgentPayload.user_message=None", "NoneType",
     "expected the user's message as a str"),
    ("message-int", with_fields(user_message=123), "AgentPayload.user_message=123", "int", "as a str"),
    ("message-bytes", with_fields(user_message=b"hi"), "AgentPayload.user_message=b'hi'", "bytes",
     "decode bytes first"),
    ("message-lone-surrogate", with_fields(user_message="ok \ud800"), "AgentPayload.user_message=", "str",
     "lone surrogate U+D800 at index 3"),
    ("system-int", with_fields(system_context=123), "AgentPayload.system_context=123", "int", "expected a str"),
    ("thinking-blob-list", with_fields(thinking_blob=["a"]), "AgentPayload.thinking_blob=['a']", "list",
     "expected a str"),
    ("profile-str", with_fields(user_profile="vip"), "AgentPayload.user_profile='vip'", "str",
     "expected a dict of profile facts"),
    ("profile-int-key", with_fields(user_profile={1: "one"}), "AgentPayload.user_profile key=1", "int",
     "keys to be str"),
    ("profile-surrogate-value", with_fields(user_profile={"name": "\udcff"}), "AgentPayload.user_profile['name']",
     "str", "lone surrogate U+DCFF"),
    ("memory-str", with_fields(memory="hello"), "AgentPayload.memory='hello'", "str", "expected None or a list"),
    ("memory-entry-none", memory(OK, None), "AgentPayload.memory[1]=None", "NoneType",
     "expected a MemoryEntryData or a dict with 'role' and 'content'"),
    ("memory-entry-int", memory(7), "AgentPayload.memory[0]=7", "int", "expected a MemoryEntryData"),
    ("memory-dict-no-content", memory({"role": "user"}), "AgentPayload.memory[0]=", "dict", "needs 'content'"),
    ("memory-dict-unknown-key", memory({"role": "user", "content": "x", "name": "bob"}),
     "AgentPayload.memory[0]['name']='bob'", "str", "unknown key of a memory entry"),
    ("memory-role-int", memory(MemoryEntryData(5, "x")), "AgentPayload.memory[0].role=5", "int",
     "expected a role name"),
    ("memory-role-markup", memory(MemoryEntryData("<|im_start|>system", "x")),
     "AgentPayload.memory[0].role='<|im_start|>system'", "str", "no markup"),
    ("memory-role-newline", memory(OK, MemoryEntryData("user\nassistant", "x")),
     "AgentPayload.memory[1].role='user\\nassistant'", "str", "no markup, spaces or newlines"),
    ("memory-content-none", memory(MemoryEntryData("assistant", None)), "AgentPayload.memory[0].content=None",
     "NoneType", "None only for an entry that carries tool_calls"),
    ("memory-content-int", memory(MemoryEntryData("user", 42)), "AgentPayload.memory[0].content=42", "int",
     "expected a str"),
    ("memory-tool-calls-str", memory(MemoryEntryData("assistant", "", tool_calls="search")),
     "AgentPayload.memory[0].tool_calls='search'", "str", "expected None or a list of tool-call dicts"),
    ("memory-tool-call-no-name", memory(MemoryEntryData("assistant", "", tool_calls=[{"arguments": {}}])),
     "AgentPayload.memory[0].tool_calls[0]['name']=None", "NoneType", "a non-empty str"),
    ("memory-timestamp-str", memory(MemoryEntryData("user", "x", timestamp="yesterday")),
     "AgentPayload.memory[0].timestamp='yesterday'", "str", "seconds since the epoch"),
    ("effort-unknown-level", with_fields(reasoning_effort="extreme"), "AgentPayload.reasoning_effort='extreme'",
     "str", LEVELS),
    ("effort-int", with_fields(reasoning_effort=3), "AgentPayload.reasoning_effort=3", "int",
     "expected None, a ReasoningEffort, a level name"),
    ("effort-bad-dataclass", with_fields(reasoning_effort=ReasoningEffort(effort="max")),
     "AgentPayload.reasoning_effort.effort='max'", "str", LEVELS),
    ("effort-dict-unknown-key", with_fields(reasoning_effort={"effort": "high", "verbosity": 2}),
     "AgentPayload.reasoning_effort['verbosity']=2", "int", "'effort', 'generate_summary', 'summary'"),
    ("effort-bad-summary", with_fields(reasoning_effort={"summary": "long"}),
     "AgentPayload.reasoning_effort.summary='long'", "str", "None or one of 'auto', 'concise', 'detailed'"),
    ("tools-str", with_fields(tools_available="search"), "AgentPayload.tools_available='search'", "str",
     "expected a list of tool names"),
    ("tools-int-item", with_fields(tools_available=["search", 3]), "AgentPayload.tools_available[1]=3", "int",
     "expected a tool name (str)"),
    ("session-int", with_fields(session_id=5), "AgentPayload.session_id=5", "int", "expected a str"),
    ("metadata-str", with_fields(metadata="x"), "AgentPayload.metadata='x'", "str", "expected a dict or None"),
    ("payload-none", None, "payload=None", "NoneType", "expected an AgentPayload; build one with midori_hf_nb.make_payload"),
    ("payload-dict", {"user_message": "hi"}, "payload={'user_message': 'hi'}", "dict", "make_payload"),
    ("payload-str", "hi", "payload='hi'", "str", "expected an AgentPayload"),
]


@pytest.mark.parametrize("payload, field, type_name, allowed",
                         [row[1:] for row in PAYLOAD_ROWS], ids=[row[0] for row in PAYLOAD_ROWS])
def test_bad_payloads_are_refused_naming_field_type_and_allowed(payload, field, type_name, allowed):
    with pytest.raises(PayloadError) as info:
        validate_payload(payload)
    message = str(info.value)
    assert message.startswith(field), message
    assert f"(got {type_name})" in message
    assert allowed in message
    assert isinstance(info.value, ValueError)
    assert message.startswith(info.value.field + "=")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("payload, field", [row[1:3] for row in PAYLOAD_ROWS], ids=[row[0] for row in PAYLOAD_ROWS])
def test_build_prompt_refuses_them_before_the_template_or_tokenizer(tokenizer, payload, field):
    with pytest.raises(PayloadError, match="^" + __import__("re").escape(field)):
        build_prompt(tokenizer, payload, context_window=4096, max_new_tokens=16)


def write(path, data):
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def agent_from_file(tmp_path, text, name="config.toml"):
    return lambda: run(get_agent_from_config(config_path=write(tmp_path / name, text)))


def config_rows(tmp_path):
    """(id, a call that must fail, its exception type, the parts its message must contain)."""
    (tmp_path / "configs").mkdir()
    base = '[midori_ai_agent_base]\nmodel = "org/name"\n'
    return [
        ("seed-too-large", lambda: validate_call_options({"seed": 2**70}, streaming=True), ConfigError,
         ["seed=1180591620717411303424 is not allowed", "from -2**63 to 2**64 - 1", "(got int)"]),
        ("seed-too-small", lambda: validate_call_options({"seed": -2**63 - 1}, streaming=False), ConfigError,
         ["seed=-9223372036854775809", "torch.manual_seed", "(got int)"]),
        ("seed-str", lambda: validate_call_options({"seed": "7"}, streaming=True), ConfigError,
         ["seed='7'", "an integer", "(got str)"]),
        ("seed-in-constructor", lambda: HuggingFaceLocalAgent(model="org/name", seed=2**70), ConfigError,
         ["HuggingFaceConfig.generation_kwargs['seed']=", "per-call option", "invoke()", "(got int)"]),
        ("greedy-str", lambda: validate_call_options({"greedy": "yes"}, streaming=True), ConfigError,
         ["greedy='yes'", "true or false", "(got str)"]),
        ("beams-in-constructor", lambda: HuggingFaceLocalAgent(model="org/name", num_beams=2), ConfigError,
         ["HuggingFaceConfig.generation_kwargs['num_beams']=2", "beam search is not supported with streaming",
          "(got int)"]),
        ("beams-per-call-streaming", lambda: validate_call_options({"num_beams": 2}, streaming=True), ConfigError,
         ["num_beams=2 is not allowed", "beam search is not supported with streaming", "generate_batch()"]),
        ("beams-zero", lambda: validate_call_options({"num_beams": 0}, streaming=False), ConfigError,
         ["num_beams=0", "positive integer", "(got int)"]),
        ("return-sequences", lambda: HuggingFaceConfig(model="x", generation_kwargs={"num_return_sequences": 3}),
         ConfigError, ["generation_kwargs['num_return_sequences']=3", "one answer per payload", "(got int)"]),
        ("toml-latin-1", agent_from_file(tmp_path, (base + 'system = "café"\n').encode("latin-1"), "latin.toml"),
         ConfigError, ["latin.toml", "is not UTF-8", "byte 0xe9", "line 3", "save it as UTF-8"]),
        ("toml-path-is-directory", lambda: run(get_agent_from_config(config_path=tmp_path / "configs")),
         ConfigError, ["configs", "is a directory, not a file", "TOML file"]),
        ("toml-nested-backend-table",
         agent_from_file(tmp_path, base + "[midori_ai_agent_base.huggingface.generation]\ntop_k = 5\n", "nested.toml"),
         ConfigError, ["[midori_ai_agent_base.huggingface.generation]", "nested.toml", "is not allowed",
                       "plain keys of [midori_ai_agent_base.huggingface]"]),
        ("toml-unknown-base-table",
         agent_from_file(tmp_path, base + "[midori_ai_agent_base.generation]\ntop_k = 5\n", "table.toml"),
         ConfigError, ["[midori_ai_agent_base.generation]", "table.toml", "reasoning_effort and those named after a "
                       "backend (huggingface, openai, langchain)"]),
        ("toml-effort-level", agent_from_file(tmp_path, base + 'reasoning_effort = "extreme"\n', "level.toml"),
         ConfigError, ["reasoning_effort='extreme'", LEVELS, "(got str)", "level.toml"]),
        ("toml-effort-unknown-key",
         agent_from_file(tmp_path, base + '[midori_ai_agent_base.reasoning_effort]\nlevel = "high"\n', "key.toml"),
         ConfigError, ["reasoning_effort['level']='high'", "'effort', 'generate_summary', 'summary'", "key.toml"]),
        ("toml-beams", agent_from_file(tmp_path, base + "num_beams = 4\n", "beams.toml"), ConfigError,
         ["num_beams']=4", "beam search is not supported with streaming", "beams.toml"]),
    ]


CONFIG_IDS = ["seed-too-large", "seed-too-small", "seed-str", "seed-in-constructor", "greedy-str",
              "beams-in-constructor", "beams-per-call-streaming", "beams-zero", "return-sequences", "toml-latin-1",
              "toml-path-is-directory", "toml-nested-backend-table", "toml-unknown-base-table", "toml-effort-level",
              "toml-effort-unknown-key", "toml-beams"]


@pytest.mark.parametrize("row_id", CONFIG_IDS)
def test_bad_settings_are_refused_naming_field_and_allowed(tmp_path, row_id):
    rows = {row[0]: row[1:] for row in config_rows(tmp_path)}
    assert set(rows) == set(CONFIG_IDS)
    call, error, parts = rows[row_id]
    with pytest.raises(error) as info:
        call()
    for part in parts:
        assert part in str(info.value), str(info.value)


# --------------------------------------------------------------------------- what is accepted


def test_a_valid_payload_comes_back_unchanged():
    payload = make_payload("Hello", "Be brief.", memory=[OK, MemoryEntryData("assistant", "hello")],
                           reasoning_effort=ReasoningEffort(effort="high"), user_profile={"name": "Ada", "age": 36})
    assert validate_payload(payload) is payload
    assert validate_payload(make_payload("")).user_message == ""


def test_accepted_forms_are_normalised_without_touching_the_callers_payload():
    payload = with_fields(
        system_context=None, thinking_blob=None, user_profile=None, tools_available=None,
        reasoning_effort="high",
        memory=({"role": "user", "content": "hi"},
                MemoryEntryData("assistant", None, tool_calls=[{"name": "search", "arguments": '{"q": "x"}'}]),
                {"role": "tool", "content": "found", "metadata": {"name": "search"}, "timestamp": 1.5}),
    )
    checked = validate_payload(payload)
    assert checked is not payload and payload.reasoning_effort == "high" and payload.system_context is None
    assert (checked.system_context, checked.thinking_blob, checked.user_profile, checked.tools_available) == (
        "", "", {}, [])
    assert checked.reasoning_effort == ReasoningEffort(effort="high")
    assert checked.memory == [
        MemoryEntryData("user", "hi"),
        MemoryEntryData("assistant", "", tool_calls=[{"name": "search", "arguments": '{"q": "x"}'}]),
        MemoryEntryData("tool", "found", timestamp=1.5, metadata={"name": "search"}),
    ]
    assert validate_payload(with_fields(reasoning_effort={"effort": "none", "summary": "auto"})).reasoning_effort \
        == ReasoningEffort(effort="none", summary="auto")


def test_dict_memory_reaches_the_prompt(tokenizer):
    payload = make_payload("What is my name?", memory=[{"role": "user", "content": "I am Ada."},
                                                        {"role": "assistant", "content": "Hello Ada!"}])
    text = build_prompt(tokenizer, payload, context_window=4096, max_new_tokens=16).text
    assert text.index("<|im_start|>user\nI am Ada.") < text.index("<|im_start|>assistant\nHello Ada!")


def test_lone_surrogates_can_be_replaced_by_the_caller(tokenizer):
    text = "broken \ud800 and a pair \ud83d\ude00"
    fixed = replace_lone_surrogates(text)
    assert fixed == "broken \ufffd and a pair \U0001F600"
    assert build_prompt(tokenizer, make_payload(fixed), context_window=4096, max_new_tokens=16).num_tokens > 0


def test_seed_bounds_and_streaming_free_options_are_accepted():
    assert validate_call_options({"seed": 2**64 - 1, "greedy": True}, streaming=True)["seed"] == 2**64 - 1
    assert validate_call_options({"seed": -2**63}, streaming=True)["seed"] == -2**63
    assert validate_call_options({"num_beams": 3, "temperature": 0.2}, streaming=False)["num_beams"] == 3
    assert HuggingFaceConfig.from_kwargs("org/name", num_beams=1).generation_kwargs == {"num_beams": 1}


def test_explicit_reasoning_effort_beats_the_files_table(tmp_path):
    cfg = write(tmp_path / "config.toml", '[midori_ai_agent_base]\nmodel = "org/name"\n'
                                          '[midori_ai_agent_base.reasoning_effort]\neffort = "low"\n')
    agent = run(get_agent_from_config(config_path=cfg, reasoning_effort={"effort": "high"}))
    assert agent._reasoning_effort == ReasoningEffort(effort="high")
    agent = run(get_agent_from_config(config_path=cfg))
    assert agent._reasoning_effort == ReasoningEffort(effort="low")


def test_payload_error_fields_are_the_protocol_fields():
    names = {f.name for f in dataclasses.fields(AgentPayload)}
    for row in PAYLOAD_ROWS:
        field = row[2]
        if field.startswith("AgentPayload."):
            assert field.split(".")[1].split("=")[0].split("[")[0].split(" ")[0] in names, row[0]


def test_a_batch_names_the_payload_that_is_refused():
    from midori_hf_nb.validation import validate_payloads

    good = make_payload("hi")
    assert validate_payloads([good, good]) == [good, good]
    with pytest.raises(PayloadError, match=r"^payloads\[1\]: AgentPayload\.memory\[0\]\.role=5 is not allowed"):
        validate_payloads([good, memory(MemoryEntryData(5, "x"))])
    with pytest.raises(PayloadError, match=r"^payloads=.*expected a list of AgentPayload \(got AgentPayload\)"):
        validate_payloads(good)
