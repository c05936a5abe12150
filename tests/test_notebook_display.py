"""Rich display of responses: answer, collapsible thinking, tool-call table; model text is always escaped."""

from __future__ import annotations

import re

import pytest

from midori_hf_nb import AgentResponse, HuggingFaceLocalAgent, make_payload
from midori_hf_nb.notebook import RecordingSink, ResponseView, render_response_html, render_response_markdown, stream_to_cell
from midori_hf_nb.testing import ScriptedOutput

from .conftest import loaded_agent, run

HOSTILE = ("<think>I will say <b>hello</b> & <style>body{display:none}</style></think>"
           "Hi <script>alert(1)</script> and <img src=x onerror=alert(2)> done")
ANSWER = "Hi <script>alert(1)</script> and <img src=x onerror=alert(2)> done"


@pytest.fixture(scope="module")
def agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=80)


@pytest.fixture(scope="module")
def hostile_response(agent):
    """A real generation whose tokens were forced to carry markup."""
    response = run(agent.invoke(make_payload("q"), logits_processor=[ScriptedOutput(agent.loaded_model.tokenizer, HOSTILE)]))
    assert response.response == ANSWER  # the generation really produced the markup
    assert "<b>hello</b>" in response.thinking
    return response


def assert_inert(html: str) -> None:
    """No element from model text survives: only our own tags are present."""
    tags = set(re.findall(r"<\s*([a-zA-Z]+)", html))
    assert tags <= {"div", "details", "summary", "table", "thead", "tbody", "tr", "th", "td", "pre"}, tags
    for tag in re.findall(r"<[^>]*>", html):  # no event handler or script in any real tag
        assert "onerror" not in tag and "script" not in tag, tag


def test_html_escapes_script_and_img(hostile_response):
    html = render_response_html(hostile_response)
    assert_inert(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b&gt;hello&lt;/b&gt; &amp; &lt;style&gt;" in html  # thinking escaped too


def test_thinking_is_collapsible_and_answer_follows(hostile_response):
    html = ResponseView(hostile_response)._repr_html_()
    assert re.search(r"<details class=\"midori-thinking\"><summary[^>]*>Thinking \(\d+ characters\)</summary>", html)
    assert html.index("midori-thinking") < html.index("midori-answer")
    assert "finish: stop" in html and "tokens/s" in html
    assert "midori-thinking" not in ResponseView(hostile_response, show_thinking=False)._repr_html_()


def test_markdown_escapes_too(hostile_response):
    md = render_response_markdown(hostile_response)
    assert "<script" not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script&gt;" in md and "&lt;img src=x onerror=alert\\(2\\)&gt;" in md


def test_plain_repr_is_the_answer(hostile_response):
    assert repr(ResponseView(hostile_response)).startswith(ANSWER)
    assert ResponseView(hostile_response).metadata is hostile_response.metadata  # fall-through


def test_streamed_updates_are_escaped_at_every_step(agent):
    sink = RecordingSink(keep=True)
    run(stream_to_cell(agent, make_payload("q"), sink=sink, throttle=0,
                       logits_processor=[ScriptedOutput(agent.loaded_model.tokenizer, HOSTILE)]))
    assert len(sink.bundles) > 5
    for bundle in sink.bundles:  # partial tags like "<scr" mid-stream are escaped as well
        assert_inert(bundle["text/html"])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sink.last["text/html"]


def test_tool_call_table_escapes_names_arguments_and_results():
    response = AgentResponse(
        thinking="", response="done", tool_calls=None,
        metadata={"tool_steps": [{"step": 1, "name": "<b>x</b>", "arguments": {"q": "<script>"}, "id": "c1",
                                  "result": "<img src=x onerror=alert(3)>", "error": None, "seconds": 0.01}],
                  "steps": 2},
    )
    html = render_response_html(response)
    assert_inert(html)
    assert "midori-tool-calls" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(3)&gt;" in html


def test_executed_and_parsed_calls_in_the_table(tiny_tools_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_tools_model), do_sample=False, max_new_tokens=80, progress=False)
    run(agent.load())

    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    try:
        scripts = ['<tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>', "It is 42."]
        response = run(agent.run_tools(make_payload("6*7?"), [multiply],
                                       logits_processor=[ScriptedOutput(agent.loaded_model.tokenizer, scripts)]))
    finally:
        run(agent.unload_model())
    html = render_response_html(response)
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td><td[^>]*>(\w+)</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td>", html)
    assert rows == [("1", "multiply", "{&quot;a&quot;: 6, &quot;b&quot;: 7}", "42")]
    assert "It is 42." in html


def test_formatter_registered_by_the_extension(hostile_response):
    from IPython.core.interactiveshell import InteractiveShell

    from midori_hf_nb.notebook.display import register_formatters, unregister_formatters

    shell = InteractiveShell.instance()
    register_formatters(shell)
    try:
        data, _ = shell.display_formatter.format(hostile_response)
        assert_inert(data["text/html"])
        assert "&lt;script&gt;" in data["text/html"]
    finally:
        unregister_formatters(shell)
    data, _ = shell.display_formatter.format(hostile_response)
    assert "text/html" not in data


def test_markdown_escaping_keeps_quotes_readable():
    from midori_hf_nb.notebook.display import escape_markdown

    assert escape_markdown("I'm \"here\" <b>") == "I'm \"here\" &lt;b&gt;"


def test_footer_names_the_decoder_and_why():
    from midori_hf_nb.notebook.display import decode_label, format_footer

    engine = {"completion_tokens": 5, "total_seconds": 0.5, "tokens_per_second": 10.0, "finish_reason": "stop",
              "decode_path": "engine", "decode_path_reason": None}
    assert format_footer(engine) == "5 tokens · 0.50 s · 10.0 tokens/s · finish: stop · decode: engine"
    fallback = {**engine, "decode_path": "generate", "decode_path_reason": "decode_loop='generate' was set"}
    assert format_footer(fallback).endswith("decode: generate (decode_loop='generate' was set)")
    assert decode_label({}) == "" and "decode" not in format_footer({"completion_tokens": 1})
