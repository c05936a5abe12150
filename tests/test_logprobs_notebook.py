"""The token view and its toggles: static escaped HTML (hover and focus by CSS alone, a ``title``
fallback), shading modes, the entropy strip, the least confident tokens, grammar pressure; and
``ResponseView``, ``stream_to_cell``, the chat panel (with branching by a click), ``%%midori --probs``
and a comparison's drill-down on a real (tiny) model."""

from __future__ import annotations

import math
import re

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from midori_hf_nb import AgentResponse, compare, make_payload
from midori_hf_nb.logprobs import Logprobs, LogprobsResponse, TokenLogprob, TopLogprob, token_probability
from midori_hf_nb.notebook import (
    ChatPanel,
    RecordingSink,
    ResponseView,
    branch_view,
    comparison_tokens,
    stream_to_cell,
    token_view,
)

from .conftest import loaded_agent, run, scripted
from .markup import PAYLOADS, parse, text_of

#: What the view itself writes: any other tag or attribute came from model text.
VIEW_TAGS = {"div", "style", "span", "table", "thead", "tbody", "tr", "th", "td", "b", "br", "ol", "li", "button"}
VIEW_ATTRIBUTES = {"class", "style", "title", "tabindex", "hidden", "role", "data-step", "data-token", "type",
                   "data-answer"}


def hostile() -> Logprobs:
    """Tokens and alternatives that are markup; the last step forbade the model's first choice."""
    content = []
    for step, text in enumerate(PAYLOADS):
        alternatives = [TopLogprob(text, math.log(0.5), list(text.encode()), 100 + step, math.log(0.5)),
                        TopLogprob(PAYLOADS[(step + 1) % len(PAYLOADS)], math.log(0.3), None, 200 + step, None)]
        content.append(TokenLogprob(text, math.log(0.5), list(text.encode()), alternatives, 100 + step,
                                    math.log(0.5), 1, 0.4 * step, step + 1, step == len(PAYLOADS) - 1))
    return Logprobs(content=content, top=2)


def response_of(found: Logprobs, text: str = "answer") -> LogprobsResponse:
    return LogprobsResponse(thinking="", response=text, metadata={"logprobs": found.as_dict()}, logprobs=found)


def check_markup(html: str) -> None:
    for tag, attrs in parse(html).tags:
        assert tag in VIEW_TAGS, (tag, attrs)
        assert {name for name, _ in attrs} <= VIEW_ATTRIBUTES, (tag, attrs)


# --------------------------------------------------------------------------- the view


def test_the_view_escapes_tokens_and_alternatives_and_needs_no_script():
    html = token_view(hostile()).html
    check_markup(html)
    assert "<script" not in html.lower() and "onerror=" not in html.replace("onerror=alert", "")  # only as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    text = text_of(html)
    assert "<script>alert(1)</script>" in text and '"><svg onload=alert(1)>' in text  # shown, as text
    # hover and keyboard focus by CSS alone; the cards stay hidden where a sanitizer drops the style block
    assert ".mt-tok:hover>.mt-card" in html and ".mt-tok:focus-within>.mt-card" in html
    tokens = re.findall(r'<span class="mt-tok" tabindex="0"', html)
    cards = re.findall(r'<span class="mt-card" role="tooltip" hidden', html)
    assert len(tokens) == len(cards) == len(PAYLOADS)
    assert 'title="step 0: &lt;script&gt;alert(1)&lt;/script&gt;' in html  # the tooltip fallback, escaped


def test_shading_modes_strip_least_confident_and_pressure():
    found = Logprobs(content=[
        TokenLogprob("a", math.log(0.9), [97], [], 1, math.log(0.9), 1, 0.3),
        TokenLogprob("b", math.log(0.02), [98], [TopLogprob("c", math.log(0.6), [99], 3, None)], 2, math.log(0.02),
                     2, 2.5, allowed=7, top_forbidden=True),
    ])
    probability, surprisal = token_view(found).html, token_view(found, shade="surprisal").html
    alphas = lambda html: re.findall(r"background:rgba\(235,100,40,([0-9.]+)\)", html)[:2]  # noqa: E731
    assert alphas(probability) != alphas(surprisal)
    low, high = (float(a) for a in alphas(probability))
    assert low < high  # the unlikely token is shaded more
    assert probability.count('class="mt-entropy"') == 1 and probability.count("entropy 2.50 nats") >= 2
    least = re.search(r'class="mt-least".*?</ol>', probability).group(0)
    assert least.index("step 1") < least.index("step 0")  # lowest probability first
    assert "the constraint allowed 7 tokens; it forbade the model&#x27;s first choice" in probability
    assert "dotted: the constraint forbade the model" in probability and "border-bottom:2px dotted" in probability
    with pytest.raises(ValueError, match="shade='bright' is not allowed: expected one of 'probability', 'surprisal'"):
        token_view(found, shade="bright")


def test_views_without_or_with_bad_probabilities_say_so():
    assert "no token probabilities: ask with logprobs=True" in token_view(AgentResponse("", "x", metadata={})).html
    bad = AgentResponse("", "x", metadata={"logprobs": {"content": [{"token": "<b>", "logprob": "nan"}]}})
    html = token_view(bad).html
    assert "metadata[&#x27;logprobs&#x27;].content[0].logprob" in html and "<b>" not in html


def test_response_view_toggle_and_branch_view():
    response = response_of(hostile())
    html = ResponseView(response, probs="surprisal")._repr_html_()
    assert 'class="midori-tokens' in html and "shaded by surprisal" in html
    assert 'class="midori-tokens' not in ResponseView(response)._repr_html_()
    with pytest.raises(ValueError, match="probs='yes' is not allowed"):
        ResponseView(response, probs="yes")
    marked = Logprobs(content=hostile().content, branch={"step": 2, "token": 7, "forced": 3})
    side = branch_view(response, response_of(marked)).html
    assert side.count('class="midori-tokens') == 2 and "branch from step 2" in side
    assert side.count("outline:2px solid rgba(80,140,255,0.9)") == 2  # the step where they part, in both


# --------------------------------------------------------------------------- on a real model


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=8, kv_reuse=False)


def test_stream_to_cell_shows_tokens_as_they_arrive(tiny_agent):
    sink = RecordingSink(keep=True)
    response = run(stream_to_cell(tiny_agent, make_payload("Hi"), sink=sink, throttle=0, probs=True,
                                  logits_processor=scripted(tiny_agent, "one two three four five")))
    assert response.response == "one two three four five"
    assert len(response.logprobs.content) == response.metadata["completion_tokens"]
    assert len(response.logprobs.content[0].top_logprobs) == 5  # probs=True asks for five alternatives
    counts = [bundle["text/html"].count('class="mt-tok"') for bundle in sink.bundles]
    assert counts[-1] == len(response.logprobs.content)
    assert 0 < min(c for c in counts if c) < counts[-1]  # partial token views while it streamed
    assert "least confident tokens" in sink.last["text/html"]


def test_chat_panel_probabilities_and_a_branch_by_click(tiny_agent):
    panel = ChatPanel(tiny_agent, greedy=True, max_new_tokens=8, top_logprobs=3)
    assert panel.probs and panel.probabilities.toggle.value
    panel.send("Hello")  # no event loop here: runs to its end
    html = panel.history_html.value
    assert 'data-answer="1"' in html and 'class="mt-alt" data-step="0"' in html
    answer = panel.entries[1]
    original = token_probability(answer.as_response(), 0)
    assert 0 < original <= 1
    alternative = next(alt for alt in answer.as_response().metadata["logprobs"]["content"][0]["top_logprobs"]
                       if alt["id"] != answer.stats.logprobs["content"][0]["id"])
    [branched] = panel.probabilities.relay.click(1, 0, alternative["id"])  # what a click on the button sends
    assert branched.logprobs.content[0].id == alternative["id"] and branched.logprobs.branch["step"] == 0
    assert panel.probabilities.branch_html.value.count('class="midori-tokens') == 2
    assert len(panel.memory) == 2 and "branched answer 1 at step 0" in panel.status
    panel.probs = False
    assert 'class="mt-tok"' not in panel.history_html.value and "top_logprobs" not in panel.generation_overrides()
    panel.probabilities.relay.click(0, 0, 1)  # a user message: refused in a notice
    assert "answer=0 is not allowed" in panel.notice
    restored = ChatPanel.from_json(tiny_agent, panel.to_json(), greedy=True, max_new_tokens=8)
    task = restored.branch(1, 1, branched.logprobs.content[1].top_logprobs[1].id)  # a saved answer branches too
    assert task.logprobs.branch["step"] == 1


def test_magic_probs(tiny_model):
    shell = InteractiveShell.instance()
    with capture_output():
        shell.run_cell("%load_ext midori_hf_nb")
    try:
        with capture_output() as captured:
            assert shell.run_cell(f"%midori load --model {tiny_model} --greedy --max-new-tokens 6 --no-progress").success
            result = shell.run_cell("%%midori --probs surprisal --no-stream --name r\nHello")
        assert result.success, captured.stderr
        html = [o.data["text/html"] for o in captured.outputs if "text/html" in o.data][-1]
        assert 'class="midori-tokens' in html and "shaded by surprisal" in html
        assert len(shell.user_ns["r"].logprobs.content[0].top_logprobs) == 5
    finally:
        with capture_output():
            shell.run_cell("%unload_ext midori_hf_nb")


def test_comparison_drill_down(tiny_agent):
    df = compare(["Hi", "Bye"], models=tiny_agent, settings={"top_logprobs": [2]}, progress=False)
    assert "token_logprobs" in df.columns and df["status"].tolist() == ["ok", "ok"]
    assert 0 < token_probability(df.loc[1], 0) <= 1
    html = comparison_tokens(df, 1).html
    assert 'class="mt-tok"' in html and "prompt: Bye" in html
    plain = compare(["Hi"], models=tiny_agent, progress=False)
    assert "token_logprobs" not in plain.columns
    with pytest.raises(ValueError, match="row=7 is not allowed"):
        comparison_tokens(df, 7)
