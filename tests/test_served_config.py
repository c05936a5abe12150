"""The served agent's configuration, factory and request building: no server needed."""

from __future__ import annotations

import pytest

from midori_hf_nb import ConfigError, MemoryEntryData, OpenAICompatibleAgent, get_agent, get_agent_from_config, make_payload
from midori_hf_nb.served import ApiKey, OpenAIConfig
from midori_hf_nb.served.request import payload_messages

from .conftest import run

KEY = "sk-config-secret-000111"


def test_get_agent_openai_builds_a_served_agent():
    agent = run(get_agent(backend="openai", model="m1", api_key=KEY, base_url="http://127.0.0.1:9/v1/",
                          max_new_tokens=7, repetition_penalty=1.1))
    assert isinstance(agent, OpenAICompatibleAgent)
    assert agent.base_url == "http://127.0.0.1:9/v1" and agent.model == "m1"
    assert agent.config.max_new_tokens == 7 and agent.config.server_options == {"repetition_penalty": 1.1}
    assert KEY not in repr(agent) and KEY not in repr(agent.config)
    with pytest.raises(ValueError, match="'model' is required"):
        run(get_agent(backend="openai", model=None, base_url="http://127.0.0.1:9/v1"))


def test_config_file_precedence_for_openai(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[midori_ai_agent_base]
backend = "openai"
model = "base-model"
base_url = "http://127.0.0.1:8000/v1"
api_key = "{KEY}"
temperature = 0.3
max_new_tokens = 100

[midori_ai_agent_base.openai]
max_new_tokens = 200
concurrency = 8

[midori_ai_agent_base.huggingface]
max_new_tokens = 999
""")
    agent = run(get_agent_from_config(config_path=cfg, temperature=0.9))
    c = agent.config
    assert isinstance(agent, OpenAICompatibleAgent)
    assert (c.model, c.base_url, c.temperature, c.max_new_tokens, c.concurrency) == (
        "base-model", "http://127.0.0.1:8000/v1", 0.9, 200, 8)
    assert c.api_key.reveal() == KEY
    other = run(get_agent_from_config(config_path=cfg, base_url="http://10.0.0.5:8000/v1", model="big"))
    assert other.base_url == "http://10.0.0.5:8000/v1" and other.model == "big"


def test_bad_values_are_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="OpenAIConfig.base_url.*http:// or https://"):
        OpenAICompatibleAgent(model="m", base_url="127.0.0.1:8000")
    with pytest.raises(ConfigError, match="user name or password"):
        OpenAICompatibleAgent(model="m", base_url=f"http://user:{KEY}@host/v1")
    with pytest.raises(ConfigError, match="OpenAIConfig.timeout"):
        OpenAICompatibleAgent(model="m", base_url="http://h/v1", timeout=0)
    with pytest.raises(ConfigError, match="OpenAIConfig.concurrency"):
        OpenAICompatibleAgent(model="m", base_url="http://h/v1", concurrency=0)
    with pytest.raises(ConfigError, match="server_options\\['logits_processor'\\].*JSON data"):
        OpenAICompatibleAgent(model="m", base_url="http://h/v1", logits_processor=object())
    cfg = tmp_path / "config.toml"
    cfg.write_text('[midori_ai_agent_base]\nbackend = "openai"\nmodel = "m"\nbase_url = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"base_url.*\(from configuration file"):
        run(get_agent_from_config(config_path=cfg))


def test_key_from_the_environment_and_masked(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config = OpenAIConfig(model="m", base_url="http://h/v1")
    assert isinstance(config.api_key, ApiKey) and config.api_key.reveal() == KEY
    assert KEY not in repr(config) and str(config.api_key) == "***" and f"{config.api_key}" == "***"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert OpenAIConfig(model="m", base_url="http://h/v1").api_key.reveal() == "no-key"


def test_overrides_resolve_like_the_local_agent():
    agent = OpenAICompatibleAgent(model="m", base_url="http://h/v1", temperature=0.7, max_new_tokens=50)
    call = agent.resolve_settings({"greedy": True, "seed": 3, "stop": ["\n"]})
    body = agent.request_body(make_payload("hi"), call)
    assert body["temperature"] == 0.0 and "top_p" not in body and body["seed"] == 3 and body["stop"] == ["\n"]
    body = agent.request_body(make_payload("hi"), agent.resolve_settings({"temperature": 0.4, "top_k": 5}))
    assert body["temperature"] == 0.4 and body["top_p"] == 0.9 and body["extra_body"] == {"top_k": 5}
    with pytest.raises(ConfigError, match="greedy=True and do_sample=True contradict"):
        agent.resolve_settings({"greedy": True, "do_sample": True})


def test_payload_messages_carry_system_profile_memory_and_tool_turns():
    memory = [
        MemoryEntryData("user", "Weather?"),
        MemoryEntryData("assistant", "", tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"},
                                                      "id": "call_1", "result": "rain"}]),
        MemoryEntryData("assistant", "It rains in Oslo."),
    ]
    payload = make_payload("And tomorrow?", "Be brief.", memory=memory, user_profile={"name": "Ada"})
    messages = payload_messages(payload)
    assert messages[0]["role"] == "system" and "Be brief." in messages[0]["content"] and "Ada" in messages[0]["content"]
    assert messages[2]["tool_calls"] == [{"id": "call_1", "type": "function",
                                          "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    assert messages[3] == {"role": "tool", "content": "rain", "tool_call_id": "call_1"}
    assert messages[-1] == {"role": "user", "content": "And tomorrow?"}
    # a call without an id cannot be sent structured: the turns go as text every server accepts
    memory[1].tool_calls[0].pop("id")
    plain = payload_messages(make_payload("And tomorrow?", memory=memory))
    assert all("tool_calls" not in m and m["role"] != "tool" for m in plain)
    assert any("get_weather" in m["content"] for m in plain)
