"""Clear errors at the boundary: each bad value is refused where it enters, naming the field and
what is allowed (not a TypeError deep inside transformers, pandas or a later render)."""

from __future__ import annotations

import json

import pytest

from midori_hf_nb import ConfigError, HuggingFaceLocalAgent, MemoryEntryData, ModelSourceError, make_payload
from midori_hf_nb.settings import check_overrides

from .conftest import loaded_agent, run

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("name, value, allowed", [
    ("stop_strings", 123, "a non-empty string or a list of non-empty strings"),
    ("stop_strings", ["ok", ""], "a non-empty string or a list of non-empty strings"),
    ("logits_processor", "notalist", "a list of LogitsProcessor objects"),
    ("stopping_criteria", [1], "a list of StoppingCriteria objects"),
    ("prefix_allowed_tokens_fn", 3, "expected a function"),
])
def test_generate_options_of_the_wrong_type_are_refused_naming_them(name, value, allowed):
    with pytest.raises(ConfigError, match=rf"generation_kwargs\['{name}'\]=.* is not allowed: .*{allowed}"):
        HuggingFaceLocalAgent(model="org/model", **{name: value})
    with pytest.raises(ConfigError, match=rf"^{name}=.* is not allowed: .*{allowed}"):
        check_overrides({name: value})


def test_generation_kwargs_that_are_not_a_dict_are_refused():
    with pytest.raises(ConfigError, match=r"^generation_kwargs='str' is not allowed: expected a dict"):
        HuggingFaceLocalAgent(model="org/model", generation_kwargs="str")
    with pytest.raises(ConfigError, match=r"generation_kwargs is an agent setting"):
        check_overrides({"generation_kwargs": "str"})


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=4)


def test_a_call_with_a_bad_option_is_refused_before_it_generates(tiny_agent):
    with pytest.raises(ConfigError, match=r"^stop_strings=123 is not allowed"):
        run(tiny_agent.invoke(make_payload("Hi."), stop_strings=123))
    with pytest.raises(ConfigError, match=r"^logits_processor='notalist' is not allowed"):
        run(tiny_agent.invoke(make_payload("Hi."), logits_processor="notalist"))
    answer = run(tiny_agent.invoke(make_payload("Hi."), stop_strings=["\n\n"]))  # the right types still work
    assert answer.metadata["completion_tokens"] <= 4


def test_a_config_path_that_is_not_a_path_is_refused():
    from midori_hf_nb import get_agent_from_config

    for value in (123, ["config.toml"], "conf\x00ig.toml"):
        with pytest.raises(ConfigError, match=r"^config_path=.* is not allowed: expected the path of a TOML file"):
            run(get_agent_from_config(config_path=value, model="org/model"))


@pytest.mark.parametrize("model", ["a\x00b", "org/model\n", "x" * 5000])
def test_a_model_name_no_path_or_hub_id_can_hold_is_refused(model):
    with pytest.raises(ConfigError, match=r"^HuggingFaceConfig.model=.* is not allowed: .*control character"):
        HuggingFaceLocalAgent(model=model)


def test_a_model_folder_without_a_tokenizer_names_what_is_missing(tmp_path, tiny_model):
    folder = tmp_path / "only-config"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    agent = HuggingFaceLocalAgent(model=str(folder), progress=False)
    with pytest.raises(ModelSourceError) as caught:
        run(agent.load())
    message = str(caught.value)
    assert "has no tokenizer" in message and str(folder) in message and "tokenizer.json" in message
    assert "sentencepiece" not in message


def test_frames_refuse_what_is_not_a_response():
    from midori_hf_nb.notebook import thinking_frame, tool_calls_frame

    for function in (tool_calls_frame, thinking_frame):
        with pytest.raises(ValueError, match=r"\(responses\[0\]=None\) is not allowed: expected an AgentResponse"):
            function([None])
        with pytest.raises(ValueError, match=r"\(responses=5\) is not allowed"):
            function(5)


def test_a_chat_panel_needs_an_agent():
    from midori_hf_nb.notebook import ChatPanel

    for agent in (None, "model-name", object()):
        with pytest.raises(ValueError, match=r"^ChatPanel\(agent=.*\) is not allowed: expected a Midori protocol agent"):
            ChatPanel(agent)


@pytest.mark.parametrize("metadata, field", [({"name": 5}, "name"), ({"name": ""}, "name"),
                                              ({"name": "add", "tool_call_id": ["x"]}, "tool_call_id")])
def test_a_tool_message_with_a_name_that_is_not_text_is_refused_at_import(metadata, field):
    from midori_hf_nb.notebook import ChatPanel
    from midori_hf_nb.testing import ScriptedAgent

    with pytest.raises(ValueError, match=rf"transcript message 0: metadata field '{field}'=.* is not allowed"):
        ChatPanel(ScriptedAgent("x"), memory=[MemoryEntryData(role="tool", content="5", metadata=metadata)])
    document = json.loads(ChatPanel(ScriptedAgent("x")).to_json())
    document["memory"] = [{"role": "tool", "content": "5", "timestamp": None, "tool_calls": None, "metadata": metadata}]
    with pytest.raises(ValueError, match=rf"metadata field '{field}'"):
        ChatPanel.from_json(ScriptedAgent("x"), json.dumps(document))


@pytest.mark.parametrize("metadata, key", [({"name": 5}, "name"), ({"name": ""}, "name"),
                                            ({"name": "add", "tool_call_id": ["x"]}, "tool_call_id"),
                                            ({"name": "x" * 201}, "name")])
def test_a_tool_entry_whose_name_is_not_text_is_refused_before_a_model_is_touched(metadata, key):
    from midori_hf_nb.validation import PayloadError, validate_payload

    payload = make_payload("What did the tool say?", memory=[
        MemoryEntryData(role="assistant", content=None, tool_calls=[{"name": "add", "arguments": {}}]),
        MemoryEntryData(role="tool", content="5", metadata=metadata)])
    with pytest.raises(PayloadError, match=rf"memory\[1\]\.metadata\['{key}'\]=.* is not allowed") as caught:
        validate_payload(payload)
    assert caught.value.field == f"AgentPayload.memory[1].metadata['{key}']"
    fine = make_payload("x", memory=[MemoryEntryData(role="tool", content="5",
                                                     metadata={"name": "add", "tool_call_id": "c1", "other": 5})])
    assert validate_payload(fine).memory[0].metadata["name"] == "add"


def test_the_compare_package_is_callable_and_holds_its_helpers(tmp_path):
    import midori_hf_nb
    from midori_hf_nb import compare
    from midori_hf_nb.compare.export import to_csv
    from midori_hf_nb.testing import ScriptedAgent

    assert midori_hf_nb.compare.to_csv is to_csv and compare is midori_hf_nb.compare
    frame = compare(["What is 2+2?"], models=ScriptedAgent("4."), progress=False)
    assert frame["response"].tolist() == ["4."]
    written = midori_hf_nb.compare.to_csv(frame, tmp_path / "grid.csv")
    assert midori_hf_nb.compare.load_comparison(written)["response"].tolist() == ["4."]
