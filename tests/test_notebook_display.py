"""Rich display of responses: answer, collapsible thinking, tool-call table; model text is always escaped.

The hostile response is a real generation of the tiny model (end to end); the rest uses responses built
from typed statistics or the scripted agent. ``test_notebook_escaping.py`` puts hostile text in every field.
"""

from __future__ import annotations

import re

import pytest

from types import SimpleNamespace

from midori_hf_nb import AgentResponse, make_payload
from midori_hf_nb.notebook import ResponseView, render_response_html, render_response_markdown
from midori_hf_nb.stats import ResponseStats
from midori_hf_nb.testing import ScriptedAgent, ScriptedOutput

from .conftest import loaded_agent, run
from .markup import assert_inert_html, assert_inert_markdown, markdown_renderings, text_of

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
    """No element from model text survives: only our own tags (and those of rendered Markdown) are present."""
    assert_inert_html(html)
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
    assert "Hi \\<script>alert(1)\\</script> and \\<img src=x onerror=alert(2)> done" in md  # only what starts a tag
    assert_inert_markdown(md)
    for renderer, html in markdown_renderings(md).items():
        assert ANSWER in text_of(html), renderer


def test_plain_repr_is_the_answer(hostile_response):
    assert repr(ResponseView(hostile_response)).startswith(ANSWER)
    assert ResponseView(hostile_response).metadata is hostile_response.metadata  # fall-through


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


def test_executed_and_parsed_calls_in_the_table():
    steps = [{"step": 1, "name": "multiply", "arguments": {"a": 6, "b": 7}, "id": "c1", "result": 42, "error": None,
              "seconds": 0.002}]
    stats = ResponseStats(finish_reason="stop", tool_steps=steps, steps=2, completion_tokens=4)
    response = AgentResponse(thinking="", response="It is 42.", metadata=stats.as_dict(),
                             tool_calls=[{"name": "add", "arguments": {"a": 42, "b": 1}, "id": "c2"}])
    html = render_response_html(response)
    rows = re.findall(r"<tr><td[^>]*>([^<]*)</td><td[^>]*>(\w+)</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td>", html)
    assert rows == [("1", "multiply", "{&quot;a&quot;: 6, &quot;b&quot;: 7}", "42"),
                    ("2", "add", "{&quot;a&quot;: 42, &quot;b&quot;: 1}", "(not executed)")]
    assert "It is 42." in html and "4 tokens" in html


def test_any_object_with_the_response_fields_is_shown():
    """The chat panel shows transcript entries this way: a plain object with the four fields."""
    entry = SimpleNamespace(response="From a transcript.", thinking="mulling", tool_calls=None,
                            metadata={"completion_tokens": 9, "finish_reason": "length", "tokens": "ignored"})
    html = render_response_html(entry)
    assert "From a transcript." in html and "mulling" in html and "9 tokens · finish: length" in html
    assert "\nFrom a transcript.\n" in render_response_markdown(entry)  # the answer's Markdown as it is


def test_a_scripted_response_is_shown_with_its_statistics():
    response = run(ScriptedAgent("<think>plan</think>Done.").invoke(make_payload("q")))
    html = ResponseView(response)._repr_html_()
    assert "Done." in html and "plan" in html and ">6 tokens ·" in html  # 22 characters: 6 pieces of 4
    assert "6 tokens" in html and "finish: stop" in html


@pytest.mark.parametrize("metadata", [None, "not a dict", ["a", "list"], {"finish_reason": 3, "completion_tokens": -1}])
def test_metadata_that_is_not_statistics_shows_no_footer(metadata):
    response = AgentResponse(thinking="", response="plain", metadata=metadata)
    html = render_response_html(response)
    assert "plain" in html and "midori-footer" not in html
    assert render_response_markdown(response) == "plain"


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

    assert escape_markdown("I'm \"here\" <b>") == "I'm \"here\" \\<b>"
    assert escape_markdown("5.19 s · finish: stop") == "5.19 s · finish: stop"  # numbers and dots read as written


def test_footer_names_the_decoder_and_why():
    from midori_hf_nb.notebook.display import decode_label, format_footer

    engine = {"completion_tokens": 5, "total_seconds": 0.5, "tokens_per_second": 10.0, "finish_reason": "stop",
              "decode_path": "engine", "decode_path_reason": None}
    assert format_footer(engine) == "5 tokens · 0.50 s · 10.0 tokens/s · finish: stop · decode: engine"
    fallback = {**engine, "decode_path": "generate", "decode_path_reason": "decode_loop='generate' was set"}
    assert format_footer(fallback).endswith("decode: generate (decode_loop='generate' was set)")
    assert decode_label({}) == "" and "decode" not in format_footer({"completion_tokens": 1})
    # typed statistics are read the same way as their metadata dict
    assert format_footer(ResponseStats.from_metadata(engine)) == format_footer(engine)
    assert decode_label(ResponseStats(decode_path="engine")) == "decode: engine"
    assert format_footer({"completion_tokens": "5", "total_seconds": float("nan")}) == ""  # wrong types are dropped
