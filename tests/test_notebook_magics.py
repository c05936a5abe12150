"""The %midori / %%midori magics, driven through a real IPython InteractiveShell; checks what was displayed."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from midori_hf_nb import DEFAULT_MODEL, AgentResponse
from midori_hf_nb.notebook import TURN_COLUMNS, MemoryReadout, current_session
from midori_hf_nb.notebook.magics import CELL_PARSER, COMMAND_PARSERS
from midori_hf_nb.testing import ScriptedOutput


def execute(shell, code):
    """Run one cell; return (ExecutionResult, captured stdout/stderr/display outputs)."""
    with capture_output() as captured:
        result = shell.run_cell(code)
    return result, captured


@pytest.fixture
def shell():
    shell = InteractiveShell.instance()
    result, _ = execute(shell, "%load_ext midori_hf_nb")
    assert result.success
    yield shell
    execute(shell, "%unload_ext midori_hf_nb")


@pytest.fixture
def tiny_shell(shell, tiny_model):
    """A shell whose session runs the tiny model greedily."""
    result, captured = execute(shell, f"%midori load --model {tiny_model} --greedy --max-new-tokens 40 --no-progress")
    assert result.success, captured.stderr
    assert "Loaded" in captured.stdout
    return shell


def script(text):
    """Force the session's next generations to produce ``text`` (a real generate, forced tokens)."""
    session = current_session()
    session.overrides["logits_processor"] = [ScriptedOutput(session.agent.loaded_model.tokenizer, text)]


def html_of(captured):
    return [o.data["text/html"] for o in captured.outputs if "text/html" in o.data]


# --------------------------------------------------------------------------- help and usage errors


def test_help_documents_every_option(shell):
    result, captured = execute(shell, "%midori help")
    assert result.success
    text = captured.stdout
    parsers = [CELL_PARSER, *COMMAND_PARSERS.values()]
    for parser in parsers:
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"{parser.prog} {option} missing from help"
    for command in COMMAND_PARSERS:
        assert f"%midori {command}" in text
    assert "%%midori" in text


@pytest.mark.parametrize("code, expected", [
    ("%midori --help", "%midori COMMAND"),
    ("%midori load --help", "--max-new-tokens"),
    ("%midori help load", "--8bit"),
    ("%%midori --help\nthis is not sent", "--name VAR"),
])
def test_help_flags_print_help_and_send_nothing(shell, code, expected):
    result, captured = execute(shell, code)
    assert result.success, captured.stderr
    assert expected in captured.stdout
    assert current_session().agent is None  # nothing was sent, no model created
    assert not captured.outputs


@pytest.mark.parametrize("code, message", [
    ("%midori load --bogus", "%midori load: unrecognized arguments: --bogus"),
    ("%midori load --temperature 9", "temperature=9.0 is not allowed"),
    ("%midori load --dtype float8", "argument --dtype: invalid choice"),
    ("%midori load --8bit --4bit", "not allowed with argument"),
    ("%midori frobnicate", "unknown command 'frobnicate'"),
    ("%midori", "a command is needed"),
    ("%midori load --model 'unbalanced", "check the quotes"),
    ("%midori load --model ./no/such/dir", "no such local file or directory"),
    ("%midori load --set nonsense", "is not KEY=VALUE"),
    ("%%midori --max-new-tokens many\nhello", "argument -n/--max-new-tokens: invalid int value: 'many'"),
    ("%%midori --greedy --temperature 0.5\nhello", "not allowed with argument"),
    ("%%midori --max-new-tokens 0\nhello", "max_new_tokens=0 is not allowed"),
    ("%%midori\n   ", "the message is empty"),
    ("%%midori\nWhat about {undefined_name_xyz}?", "{undefined_name_xyz} names no variable"),
])
def test_bad_options_print_a_usage_error_not_a_traceback(shell, code, message):
    result, captured = execute(shell, code)
    assert not result.success
    assert captured.stderr.startswith("UsageError:"), captured.stderr
    assert message in captured.stderr
    assert "Traceback" not in captured.stdout + captured.stderr
    assert current_session().agent is None  # rejected before any model was created or loaded


# --------------------------------------------------------------------------- sending cells


def test_cell_magic_streams_into_one_display_and_stores_the_response(tiny_shell):
    script("Streaming into the cell works.")
    result, captured = execute(tiny_shell, "%%midori --name answer --throttle 0\nSay something.")
    assert result.success, captured.stderr
    outputs = captured.outputs
    assert len(outputs) >= 3
    assert len({o.transient["display_id"] for o in outputs}) == 1  # one display handle, updated in place
    assert outputs[0].update is False and all(o.update for o in outputs[1:])
    assert "Streaming into the cell works." in outputs[-1].data["text/html"]
    assert "finish: stop" in outputs[-1].data["text/html"]
    answer = tiny_shell.user_ns["answer"]
    assert isinstance(answer, AgentResponse) and answer.response == "Streaming into the cell works."
    assert current_session().last_response is answer


def test_response_markup_is_escaped_in_the_cell_output(tiny_shell):
    script("Look: <script>alert(1)</script> <img src=x onerror=alert(2)>")
    result, captured = execute(tiny_shell, "%%midori --name r\nShow markup.")
    assert result.success, captured.stderr
    assert tiny_shell.user_ns["r"].response == "Look: <script>alert(1)</script> <img src=x onerror=alert(2)>"
    for html in html_of(captured):
        assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;" in html_of(captured)[-1]


def test_no_stream_shows_the_rich_view_once(tiny_shell):
    script("<think>quietly</think>All at once.")
    result, captured = execute(tiny_shell, "%%midori --no-stream --name r\nHi")
    assert result.success, captured.stderr
    assert len(captured.outputs) == 1
    html = captured.outputs[0].data["text/html"]
    assert "All at once." in html and "<details class=\"midori-thinking\">" in html
    assert "midori-thinking" not in html_of(execute(tiny_shell, "%%midori --no-stream --hide-thinking\nHi")[1])[0]


def test_variable_interpolation_from_the_namespace(tiny_shell):
    script("ok")
    tiny_shell.user_ns.update(city="Lyon", facts={"n": 3})
    result, captured = execute(tiny_shell, '%%midori\nTell me about {city}; keep {{braces}} and {"json": 1}.')
    assert result.success, captured.stderr
    sent = current_session().conversation.entries[-2].content
    assert sent == 'Tell me about Lyon; keep {braces} and {"json": 1}.'
    result, _ = execute(tiny_shell, "%%midori --raw\nLiteral {city}")
    assert result.success
    assert current_session().conversation.entries[-2].content == "Literal {city}"


def test_conversation_memory_history_and_reset(tiny_shell):
    script("First answer.")
    execute(tiny_shell, "%%midori --name one\nFirst question.")
    script("Second answer.")
    execute(tiny_shell, "%%midori --name two\nSecond question.")
    script("Second answer.")
    execute(tiny_shell, "%%midori --no-memory --name alone\nSecond question.")
    ns = tiny_shell.user_ns
    # memory is on by default: the second request carried the first exchange
    assert ns["two"].metadata["prompt_tokens"] > ns["alone"].metadata["prompt_tokens"]

    result, captured = execute(tiny_shell, "%midori history --name h")
    assert result.success
    frame = ns["h"]
    assert list(frame.columns) == list(TURN_COLUMNS)
    assert frame["content"].tolist() == ["First question.", "First answer.", "Second question.", "Second answer."]
    assert frame["role"].tolist() == ["user", "assistant"] * 2
    assert frame.loc[1, "tokens"] == ns["one"].metadata["completion_tokens"]
    assert "First answer." in html_of(captured)[0] and "<table" in html_of(captured)[0]

    result, captured = execute(tiny_shell, "%midori reset")
    assert "4 turns forgotten" in captured.stdout
    result, captured = execute(tiny_shell, "%midori history --name h2")
    assert ns["h2"].empty and list(ns["h2"].columns) == list(TURN_COLUMNS)
    assert "The conversation is empty." in captured.stdout


def test_ask_sends_a_line(tiny_shell):
    script("Line answer.")
    tiny_shell.user_ns.pop("r", None)
    result, captured = execute(tiny_shell, "%midori ask --name r What is up, in one line")
    assert result.success, captured.stderr
    assert tiny_shell.user_ns["r"].response == "Line answer."
    assert current_session().conversation.entries[-2].content == "What is up, in one line"


def test_cell_options_reach_the_generation(tiny_shell):
    script(" ".join(f"w{i}" for i in range(60)))
    result, captured = execute(tiny_shell, "%%midori --max-new-tokens 5 --name r\nCount.")
    assert result.success, captured.stderr
    meta = tiny_shell.user_ns["r"].metadata
    assert meta["completion_tokens"] == 5 and meta["finish_reason"] == "length" and meta["max_new_tokens"] == 5
    execute(tiny_shell, "%%midori --temperature 0.8 --seed 3 -n 3 --name s --system 'Be brief.'\nCount.")
    meta = tiny_shell.user_ns["s"].metadata
    assert meta["do_sample"] is True and meta["temperature"] == 0.8 and meta["seed"] == 3


# --------------------------------------------------------------------------- load, memory, unload


def test_load_switches_settings_without_reloading_the_same_model(tiny_shell):
    from midori_hf_nb.engine import REGISTRY

    session = current_session()
    old = session.agent
    loads = REGISTRY.load_count
    result, captured = execute(tiny_shell, "%midori load --max-new-tokens 7 --temperature 0.5 --set repetition_penalty=1.3 "
                                           "--system 'You are terse.'")
    assert result.success, captured.stderr
    assert REGISTRY.load_count == loads  # the shared copy was reused
    agent = session.agent
    assert agent is not old and not old.is_loaded and agent.is_loaded
    config = agent.config
    assert config.max_new_tokens == 7 and config.temperature == 0.5 and config.do_sample
    assert config.generation_kwargs == {"repetition_penalty": 1.3}
    assert session.system == "You are terse."
    assert config.model == old.config.model  # options not given keep their values
    result, captured = execute(tiny_shell, "%midori status")
    assert "max_new_tokens=7" in captured.stdout and "You are terse." in captured.stdout


def test_memory_readout_and_unload(tiny_shell):
    name = current_session().agent.loaded_model.spec.source.name
    result, captured = execute(tiny_shell, "%midori memory --name m")
    assert result.success
    readout = tiny_shell.user_ns["m"]
    assert isinstance(readout, MemoryReadout)
    assert any(m["model"] == name for m in readout.models)
    html = html_of(captured)[0]
    assert "resident" in html and "midori-memory" in html

    result, captured = execute(tiny_shell, "%midori unload")
    assert result.success and "Unloaded" in captured.stdout
    assert not current_session().agent.is_loaded
    execute(tiny_shell, "%midori memory --name m2")
    assert not any(m["model"] == name for m in tiny_shell.user_ns["m2"].models)
    assert "No model is loaded." in execute(tiny_shell, "%midori unload")[1].stdout

    # the next message loads the same model again
    result, captured = execute(tiny_shell, "%%midori --name again --max-new-tokens 3\nBack?")
    assert result.success, captured.stderr
    assert current_session().agent.is_loaded and tiny_shell.user_ns["again"].metadata["completion_tokens"] >= 1


def test_unload_ext_removes_the_magics(shell):
    execute(shell, "%unload_ext midori_hf_nb")
    result, captured = execute(shell, "%midori help")
    assert not result.success and "midori" in captured.stderr
    assert execute(shell, "%load_ext midori_hf_nb")[0].success
    assert execute(shell, "%midori help")[0].success


def test_unregister_magics_relies_on_this_ipythons_magics_manager(shell):
    """The one IPython internal the magics use (notebook/ipython_compat.py), on the installed IPython."""
    from midori_hf_nb.notebook.ipython_compat import unregister_magics

    manager = shell.magics_manager
    assert "midori" in manager.magics["line"] and "midori" in manager.magics["cell"]
    assert "MidoriMagics" in manager.registry
    assert unregister_magics(shell, "midori", "MidoriMagics") is True
    assert "midori" not in manager.magics["line"] and "midori" not in manager.magics["cell"]
    assert "MidoriMagics" not in manager.registry

    class Elsewhere:  # a shell whose manager is laid out otherwise: told, not raised
        magics_manager = None

    assert unregister_magics(Elsewhere(), "midori", "MidoriMagics") is False


@pytest.mark.slow
def test_first_cell_without_load_uses_the_offline_default_model(shell):
    result, captured = execute(shell, "%%midori --greedy --max-new-tokens 8 --name r\nWhat is the capital of France?")
    assert result.success, captured.stderr
    assert "offline default model" in captured.stdout
    assert current_session().agent.config.model == DEFAULT_MODEL
    response = shell.user_ns["r"]
    assert response.metadata["completion_tokens"] >= 1 and response.response
    assert response.response[:10] in html_of(captured)[-1].replace("&#x27;", "'")
