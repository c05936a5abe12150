"""get_agent / get_agent_from_config: precedence, sections, and clear errors naming the file."""

from __future__ import annotations

import pytest

from midori_hf_nb import ConfigError, HuggingFaceLocalAgent, ReasoningEffort, get_agent, get_agent_from_config

from .conftest import run


def test_get_agent_huggingface_ignores_api_key():
    agent = run(get_agent(backend="huggingface", model="org/model", api_key="", device="cpu", max_new_tokens=9))
    assert isinstance(agent, HuggingFaceLocalAgent)
    assert agent.config.device == "cpu" and agent.config.max_new_tokens == 9
    assert not agent.is_loaded


def test_unknown_backend_names_valid_ones():
    with pytest.raises(ValueError, match="'langchain'.*'huggingface', 'openai'"):
        run(get_agent(backend="langchain", model="gpt", api_key="x"))


def write(path, text):
    path.write_text(text)
    return path


def test_precedence_explicit_over_backend_table_over_base(tmp_path):
    cfg = write(tmp_path / "config.toml", """
[midori_ai_agent_base]
backend = "huggingface"
model = "org/base-model"
temperature = 0.3
max_new_tokens = 100
top_k = 7

[midori_ai_agent_base.reasoning_effort]
effort = "high"

[midori_ai_agent_base.huggingface]
max_new_tokens = 200
device = "cpu"

[midori_ai_agent_base.openai]
max_new_tokens = 999
""")
    agent = run(get_agent_from_config(config_path=cfg, temperature=0.9))
    c = agent.config
    assert c.model == "org/base-model"
    assert c.temperature == 0.9          # explicit argument wins
    assert c.max_new_tokens == 200       # backend table overrides the base section
    assert c.top_k == 7                  # base section
    assert c.device == "cpu"
    assert c.top_p == 0.9                # default
    assert agent._reasoning_effort == ReasoningEffort(effort="high")
    agent2 = run(get_agent_from_config(config_path=cfg, model="org/other"))
    assert agent2.config.model == "org/other"


def test_seed_config_file_example(tmp_path):
    cfg = write(tmp_path / "config.toml", """
[midori_ai_agent_base]
backend = "huggingface"
model = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"

[midori_ai_agent_base.huggingface]
device = "auto"
torch_dtype = "auto"
max_new_tokens = 512
temperature = 0.7
""")
    agent = run(get_agent_from_config(config_path=str(cfg)))
    assert agent.config.model == "TinyLlama/TinyLlama-1.1B-Chat-v1.0" and agent.config.max_new_tokens == 512


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        run(get_agent_from_config(config_path=missing))


def test_invalid_toml_is_named(tmp_path):
    bad = write(tmp_path / "bad.toml", "[midori_ai_agent_base\nmodel = ")
    with pytest.raises(ConfigError, match="bad.toml.*not valid TOML"):
        run(get_agent_from_config(config_path=bad))


def test_missing_model_names_file(tmp_path):
    cfg = write(tmp_path / "config.toml", '[midori_ai_agent_base]\nbackend = "huggingface"\n')
    with pytest.raises(ConfigError, match=r"no model given.*config\.toml"):
        run(get_agent_from_config(config_path=cfg))


def test_missing_section_names_file(tmp_path):
    cfg = write(tmp_path / "other.toml", '[something_else]\nmodel = "x/y"\n')
    with pytest.raises(ConfigError, match=r"other\.toml.*\[midori_ai_agent_base\]"):
        run(get_agent_from_config(config_path=cfg))


def test_bad_value_in_file_names_field_and_file(tmp_path):
    cfg = write(tmp_path / "config.toml", '[midori_ai_agent_base]\nmodel = "x/y"\ntemperature = 5\n')
    with pytest.raises(ConfigError, match=r"temperature.*config\.toml"):
        run(get_agent_from_config(config_path=cfg))


def test_config_found_in_parent_directory(tmp_path, monkeypatch):
    write(tmp_path / "config.toml", '[midori_ai_agent_base]\nmodel = "org/found"\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    agent = run(get_agent_from_config())
    assert agent.config.model == "org/found"


def test_no_config_anywhere_needs_explicit_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no model given"):
        run(get_agent_from_config())
    assert run(get_agent_from_config(model="org/explicit")).config.model == "org/explicit"
