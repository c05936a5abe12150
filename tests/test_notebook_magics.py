"""The %midori / %%midori magics, driven through a real IPython InteractiveShell; checks what was displayed.

Cells are answered by the scripted agent (``%midori use``: any protocol agent; no model, exact). Loading,
switching, freeing and the refusal of bad ``--set`` options run on the tiny model, and one slow test sends
the first cell to the offline default model.
"""

from __future__ import annotations

import re
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from midori_hf_nb import DEFAULT_MODEL, AgentResponse, HuggingFaceLocalAgent
from midori_hf_nb.config import DTYPES
from midori_hf_nb.notebook import TURN_COLUMNS, DisplayStats, MemoryReadout, current_session
from midori_hf_nb.notebook.magics import CELL_PARSER, COMMAND_PARSERS
from midori_hf_nb.stats import stats_of
from midori_hf_nb.testing import ScriptedAgent, ScriptedOutput

from .conftest import run
from .markup import assert_inert_html


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


@pytest.fixture
def scripted_shell(shell):
    """A shell whose session sends its messages to a scripted agent (``%midori use``)."""
    shell.user_ns["scripted_agent"] = ScriptedAgent("Scripted.")
    result, captured = execute(shell, "%midori use scripted_agent")
    assert result.success, captured.stderr
    assert "Using scripted_agent (ScriptedAgent, model scripted, not in this process)" in captured.stdout
    yield shell
    shell.user_ns.pop("scripted_agent", None)


def answer_with(*texts, **options):
    """The session's next messages are answered with ``texts`` (one per message) by a new scripted agent."""
    agent = ScriptedAgent(list(texts), **options)
    current_session().agent = agent
    return agent


def force(text):
    """Force the session's next real generations to produce ``text`` (a real generate, forced tokens)."""
    session = current_session()
    session.overrides["logits_processor"] = [ScriptedOutput(session.agent.loaded_model.tokenizer, text)]


def html_of(captured):
    return [o.data["text/html"] for o in captured.outputs if "text/html" in o.data]


# --------------------------------------------------------------------------- help and usage errors


def test_help_all_documents_every_option(shell):
    result, captured = execute(shell, "%midori help all")
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


@pytest.mark.parametrize("code", ["%midori help", "%midori --help", "%midori -h"])
def test_help_lists_the_commands_in_a_few_lines(shell, code):
    result, captured = execute(shell, code)
    assert result.success, captured.stderr
    lines = captured.stdout.strip().splitlines()
    assert len(lines) <= 12, captured.stdout
    for command in COMMAND_PARSERS.keys() - {"help"}:
        assert any(line.strip().startswith(f"%midori {command}") for line in lines), command
    assert lines[1].strip().startswith("%%midori") and "%midori help COMMAND" in captured.stdout
    assert "--max-new-tokens" not in captured.stdout  # options are one command away


@pytest.mark.parametrize("code, expected, absent", [
    ("%%midori --help", "--schema NAME", "--8bit"),  # the cell magic with no body: its own help
    ("%%midori -g --help", "--schema NAME", "--8bit"),
    ("%midori help cell", "--schema NAME", "--8bit"),
    ("%midori help load", "--8bit", "--schema"),
    ("%midori load --help", "--8bit", "--schema"),
    ("%midori help use", "--base-url URL", "--8bit"),
])
def test_help_for_one_command_is_short(shell, code, expected, absent):
    result, captured = execute(shell, code)
    assert result.success, captured.stderr
    text = captured.stdout
    assert expected in text and absent not in text
    assert "cell body is empty" not in text + captured.stderr
    assert len(text.strip().splitlines()) <= 40, text
    assert current_session().agent is None and not captured.outputs


def test_an_empty_cell_magic_without_help_is_still_refused(shell):
    result, captured = execute(shell, "%%midori -g")
    assert not result.success and current_session().agent is None


def test_help_for_an_unknown_command_names_the_commands(shell):
    result, captured = execute(shell, "%midori help bogus")
    assert not result.success and "no command 'bogus'" in captured.stderr and "load" in captured.stderr


def test_dtype_choices_and_help_come_from_the_core():
    load = COMMAND_PARSERS["load"]
    dtype = next(a for a in load._actions if "--dtype" in a.option_strings)
    assert tuple(dtype.choices) == DTYPES
    help_text = load.format_help()
    assert "float32 on CPU" not in help_text and "checked when the model loads" not in help_text
    assert ", ".join(DTYPES) in " ".join(help_text.split())


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
    ("%midori load --set bogus_option=1",
     "%midori load: --set bogus_option=1 is not allowed: unknown generation option(s) 'bogus_option': expected "
     "attributes of transformers.GenerationConfig"),
    ("%midori load --set temperature=7", "temperature=7 is not allowed"),
    ("%midori load --set num_threads=0", "num_threads=0 is not allowed"),
    ("%midori load --greedy --set do_sample=true", "contradict each other"),
    ("%midori load --set seed=3", "seed is not a setting of the model"),
    ("%midori use no_such_variable_xyz", "'no_such_variable_xyz' names no variable in the notebook"),
    ("%midori use", "expected a notebook variable holding an agent, or --backend openai"),
    ("%%midori --temperature 3\nhello", "temperature=3.0 is not allowed"),
    ("%%midori --seed 99999999999999999999999\nhello", "seed=99999999999999999999999 is not allowed"),
    ("%%midori --throttle -1\nhello", "--throttle -1.0 is not allowed"),
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


# --------------------------------------------------------------------------- sending cells (scripted agent)


def test_cell_magic_streams_into_one_display_and_stores_the_response(scripted_shell):
    answer_with("Streaming into the cell works.")
    result, captured = execute(scripted_shell, "%%midori --name answer --throttle 0\nSay something.")
    assert result.success, captured.stderr
    outputs = captured.outputs
    assert len(outputs) >= 3
    assert len({o.transient["display_id"] for o in outputs}) == 1  # one display handle, updated in place
    assert outputs[0].update is False and all(o.update for o in outputs[1:])
    assert "Streaming into the cell works." in outputs[-1].data["text/html"]
    assert "finish: stop" in outputs[-1].data["text/html"]
    answer = scripted_shell.user_ns["answer"]
    assert isinstance(answer, AgentResponse) and answer.response == "Streaming into the cell works."
    session = current_session()
    assert session.last_response is answer
    assert isinstance(session.last_display, DisplayStats) and session.last_display.updates == len(outputs) - 1
    assert "display" not in answer.metadata


def test_response_markup_is_escaped_in_the_cell_output(scripted_shell):
    hostile = "Look: <script>alert(1)</script> <img src=x onerror=alert(2)>\r<iframe src=javascript:alert(3)>"
    answer_with(f"<think>{hostile}</think>{hostile}", piece_chars=3)
    result, captured = execute(scripted_shell, "%%midori --name r --throttle 0\nShow markup.")
    assert result.success, captured.stderr
    assert scripted_shell.user_ns["r"].response == hostile
    assert len(html_of(captured)) > 5
    for html in html_of(captured):  # every update, partial tags included
        assert_inert_html(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;" in html_of(captured)[-1]
    result, captured = execute(scripted_shell, "%%midori --no-stream\nAgain.")
    assert_inert_html(html_of(captured)[0])


def test_answers_render_as_markdown_and_plain_keeps_the_text(scripted_shell):
    answer = "Use:\n\n```python\nprint('hi')\n```\n\n- *one*\n- [bad](javascript:alert(1))"
    for options in ("--throttle 0", "--no-stream"):
        answer_with(answer, piece_chars=5)
        result, captured = execute(scripted_shell, f"%%midori {options}\nShow code.")
        assert result.success, captured.stderr
        html = html_of(captured)[-1]
        assert re.search(r'<pre class="midori-code highlight language-python"[^>]*><code><span class="nb"', html), html
        assert re.search(r"<ul>\s*<li><em>one</em></li>", html) and "href" not in html
        for shown in html_of(captured):
            assert_inert_html(shown)
        answer_with(answer, piece_chars=5)
        result, captured = execute(scripted_shell, f"%%midori --plain {options}\nShow code.")
        assert result.success, captured.stderr
        html = html_of(captured)[-1]
        assert "<pre" not in html and "<ul>" not in html and "```python\nprint(&#x27;hi&#x27;)\n```" in html


def test_no_stream_shows_the_rich_view_once(scripted_shell):
    answer_with("<think>quietly</think>All at once.")
    result, captured = execute(scripted_shell, "%%midori --no-stream --name r\nHi")
    assert result.success, captured.stderr
    assert len(captured.outputs) == 1
    html = captured.outputs[0].data["text/html"]
    assert "All at once." in html and "<details class=\"midori-thinking\">" in html
    assert current_session().last_display is None
    assert "midori-thinking" not in html_of(execute(scripted_shell, "%%midori --no-stream --hide-thinking\nHi")[1])[0]


def test_variable_interpolation_from_the_namespace(scripted_shell):
    scripted_shell.user_ns.update(city="Lyon", facts={"n": 3})
    result, captured = execute(scripted_shell, '%%midori\nTell me about {city}; keep {{braces}} and {"json": 1}.')
    assert result.success, captured.stderr
    sent = current_session().conversation.entries[-2].content
    assert sent == 'Tell me about Lyon; keep {braces} and {"json": 1}.'
    result, _ = execute(scripted_shell, "%%midori --raw\nLiteral {city}")
    assert result.success
    assert current_session().conversation.entries[-2].content == "Literal {city}"


def test_conversation_memory_history_and_reset(scripted_shell):
    agent = answer_with("First answer.", "Second answer.", "Alone.")
    execute(scripted_shell, "%%midori --name one\nFirst question.")
    execute(scripted_shell, "%%midori --name two\nSecond question.")
    execute(scripted_shell, "%%midori --no-memory --name alone\nSecond question.")
    ns = scripted_shell.user_ns
    # memory is on by default: the second request carried the first exchange, the third none
    assert [(m.role, m.content) for m in agent.calls[1].payload.memory] == [("user", "First question."),
                                                                            ("assistant", "First answer.")]
    assert agent.calls[2].payload.memory is None

    result, captured = execute(scripted_shell, "%midori history --name h")
    assert result.success
    frame = ns["h"]
    assert list(frame.columns) == list(TURN_COLUMNS)
    assert frame["content"].tolist() == ["First question.", "First answer.", "Second question.", "Second answer."]
    assert frame["role"].tolist() == ["user", "assistant"] * 2
    assert frame.loc[1, "tokens"] == stats_of(ns["one"]).completion_tokens == 4
    assert "First answer." in html_of(captured)[0] and "<table" in html_of(captured)[0]

    result, captured = execute(scripted_shell, "%midori reset")
    assert "4 turns forgotten" in captured.stdout
    result, captured = execute(scripted_shell, "%midori history --name h2")
    assert ns["h2"].empty and list(ns["h2"].columns) == list(TURN_COLUMNS)
    assert "The conversation is empty." in captured.stdout


def test_history_stamps_the_message_when_sent_and_the_answer_when_it_ended(scripted_shell):
    answer_with("A slow answer.", delay=0.05, piece_chars=1)  # 14 pieces: about 0.7 s
    before = time.time()
    execute(scripted_shell, "%%midori\nA question.")
    after = time.time()
    result, _ = execute(scripted_shell, "%midori history --name h")
    frame = scripted_shell.user_ns["h"]
    sent, ended = (t.timestamp() for t in frame["timestamp"])
    assert before <= sent < ended <= after
    assert ended - sent >= 0.5  # the answer took its time: the user turn is not stamped when it arrived


def test_ask_sends_a_line(scripted_shell):
    answer_with("Line answer.")
    scripted_shell.user_ns.pop("r", None)
    result, captured = execute(scripted_shell, "%midori ask --name r What is up, in one line")
    assert result.success, captured.stderr
    assert scripted_shell.user_ns["r"].response == "Line answer."
    assert current_session().conversation.entries[-2].content == "What is up, in one line"


def test_cell_options_reach_the_agent_checked_through_the_settings(scripted_shell):
    agent = answer_with(" ".join(f"w{i}" for i in range(60)))
    current_session().overrides = {"top_k": 7}
    result, captured = execute(scripted_shell, "%%midori --max-new-tokens 5 --name r\nCount.")
    assert result.success, captured.stderr
    assert agent.calls[-1].overrides == {"top_k": 7, "max_new_tokens": 5}
    stats = stats_of(scripted_shell.user_ns["r"])
    assert stats.completion_tokens == 5 and stats.finish_reason == "length"
    execute(scripted_shell, "%%midori --temperature 0.8 --seed 3 -n 3 --name s --system 'Be brief.'\nCount.")
    # the settings' own rule: a temperature above 0 turns sampling on
    assert agent.calls[-1].overrides == {"top_k": 7, "max_new_tokens": 3, "temperature": 0.8, "do_sample": True,
                                         "seed": 3}
    assert agent.calls[-1].payload.system_context == "Be brief."
    execute(scripted_shell, "%%midori --greedy\nCount.")
    assert agent.calls[-1].overrides == {"top_k": 7, "do_sample": False}


def test_status_memory_and_unload_of_an_agent_that_is_not_local(scripted_shell):
    answer_with("x").model = "<b>remote-model</b>"
    result, captured = execute(scripted_shell, "%midori status")
    assert result.success and "not a local agent" in captured.stdout and "<b>remote-model</b>" in captured.stdout
    result, captured = execute(scripted_shell, "%midori memory --name m")
    assert result.success, captured.stderr
    readout = scripted_shell.user_ns["m"]
    assert readout.remote == [{"model": "<b>remote-model</b>", "agent": "ScriptedAgent"}]
    html = html_of(captured)[0]
    assert "remote/unknown" in html and "&lt;b&gt;remote-model&lt;/b&gt;" in html
    assert_inert_html(html)
    result, captured = execute(scripted_shell, "%midori unload")
    assert result.success and "its memory is not in this process" in captured.stdout


def test_use_refuses_what_is_not_an_agent(shell):
    shell.user_ns["not_an_agent"] = 42
    result, captured = execute(shell, "%midori use not_an_agent")
    assert not result.success and captured.stderr.startswith("UsageError:")
    assert "agent=int is not allowed: expected a Midori protocol agent" in captured.stderr
    assert current_session().agent is None


# --------------------------------------------------------------------------- load, memory, unload (tiny model)


def test_a_loaded_local_model_answers_a_cell(tiny_shell):
    force("Streaming a real generation.")
    result, captured = execute(tiny_shell, "%%midori --name answer --throttle 0\nSay something.")
    assert result.success, captured.stderr
    assert tiny_shell.user_ns["answer"].response == "Streaming a real generation."
    assert "Streaming a real generation." in html_of(captured)[-1] and "decode: engine" in html_of(captured)[-1]
    assert stats_of(tiny_shell.user_ns["answer"]).prompt_tokens > 0


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


def test_a_bad_set_option_is_refused_at_once_and_never_kept(tiny_shell):
    session = current_session()
    agent, config = session.agent, session.agent.config
    result, captured = execute(tiny_shell, "%midori load --set bogus_option=1")
    assert not result.success and captured.stderr.startswith("UsageError:")
    assert "--set bogus_option=1 is not allowed: unknown generation option(s) 'bogus_option'" in captured.stderr
    assert "configuration fields: device" in captured.stderr and "Traceback" not in captured.stderr
    assert session.agent is agent and agent.is_loaded and session.agent.config == config  # nothing changed
    # a known option with a value generate() refuses: refused by a trial token, the session keeps its agent
    result, captured = execute(tiny_shell, '%midori load --set repetition_penalty=\'"high"\'')
    assert not result.success and "--set repetition_penalty='high' is not allowed: generate() refused it" \
        in captured.stderr
    assert session.agent is agent and agent.is_loaded
    # later cells work; and the bad option survives neither an unload nor a new load
    force("Still fine.")
    assert execute(tiny_shell, "%%midori --name ok\nHi")[0].success and tiny_shell.user_ns["ok"].response == "Still fine."
    execute(tiny_shell, "%midori unload")
    result, captured = execute(tiny_shell, "%midori load --max-new-tokens 9 --set num_threads=1 --no-progress")
    assert result.success, captured.stderr
    assert session.agent.config.generation_kwargs == {} and session.agent.config.num_threads == 1
    force("After reloading.")
    assert execute(tiny_shell, "%%midori --name again\nHi")[0].success
    assert tiny_shell.user_ns["again"].response == "After reloading."


def test_the_session_unloads_only_agents_it_created(tiny_shell, tiny_model):
    mine = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, progress=False)
    run(mine.load())
    try:
        created = current_session().agent
        tiny_shell.user_ns["mine"] = mine
        assert execute(tiny_shell, "%midori use mine")[0].success
        assert not created.is_loaded  # the session's own agent was released
        result, captured = execute(tiny_shell, "%midori load --max-new-tokens 5 --no-progress")
        assert result.success, captured.stderr
        assert mine.is_loaded and current_session().agent is not mine  # the user's agent was left alone
        assert current_session().agent.config.max_new_tokens == 5
    finally:
        run(mine.unload_model())


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
