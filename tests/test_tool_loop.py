"""The opt-in execution loop ``run_tools`` on real generations with forced outputs.

Each generation of the loop is a real ``generate`` on a tiny model whose tokens are forced by
``ScriptedOutput`` (one script per step); the prompts that reached the model are read back
from the processor to check that tool results were fed back in the template's format.
"""

from __future__ import annotations

import asyncio
import threading

import pandas as pd
import pytest

from midori_hf_nb.testing import ScriptedOutput

from .conftest import TEMPLATE_MODELS, agent_on_template, run


@pytest.fixture(scope="module", params=TEMPLATE_MODELS)
def agent(request):
    """An agent on a template without tools support, then on one with it."""
    yield from agent_on_template(request, max_new_tokens=96)


def script(agent, texts) -> ScriptedOutput:
    return ScriptedOutput(agent.loaded_model.tokenizer, texts)


def prompts(agent, scripted: ScriptedOutput) -> list[str]:
    return [agent.loaded_model.tokenizer.decode(ids) for ids in scripted.prompts]


def tool_result_text(agent, name: str, text: str) -> str:
    """How a tool result appears in the prompt of each template."""
    return f"<tool_response>{text}</tool_response>" if agent.structured else f"Result of tool {name}: {text}"


class Calculator:
    """Two tools that remember how they were called."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

        def multiply(a: int, b: int) -> int:
            """Multiply two integers.

            Args:
                a: The first factor.
                b: The second factor.
            """
            self.calls.append(("multiply", a, b))
            return a * b

        def add(a: int, b: int) -> int:
            """Add two integers.

            Args:
                a: The first term.
                b: The second term.
            """
            self.calls.append(("add", a, b))
            return a + b

        self.tools = [multiply, add]


def test_two_step_calculation(agent, payload):
    calc = Calculator()
    forced = script(agent, [
        '<think>First the product.</think><tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>',
        "TOOL_CALL: add(a=42, b=1)",
        "6 times 7 is 42, plus 1 is 43.",
    ])
    response = run(agent.run_tools(payload("What is 6 * 7 + 1?"), calc.tools, logits_processor=[forced]))

    assert calc.calls == [("multiply", 6, 7), ("add", 42, 1)]
    assert response.response == "6 times 7 is 42, plus 1 is 43."
    assert response.tool_calls is None and response.thinking == "First the product."
    meta = response.metadata
    assert meta["steps"] == 3 and meta["max_steps_reached"] is False
    steps = meta["tool_steps"]
    assert [(s["step"], s["name"], s["arguments"], s["result"], s["error"]) for s in steps] == [
        (1, "multiply", {"a": 6, "b": 7}, 42, None), (2, "add", {"a": 42, "b": 1}, 43, None)]
    assert all(isinstance(s["seconds"], float) and s["seconds"] >= 0 for s in steps)
    assert len({s["id"] for s in steps}) == 2

    # the results reached the prompts of the later steps, in the template's format
    first, second, third = prompts(agent, forced)
    assert "42" not in first
    assert tool_result_text(agent, "multiply", "42") in second and "43" not in second
    assert tool_result_text(agent, "multiply", "42") in third and tool_result_text(agent, "add", "43") in third
    if agent.structured:  # the assistant's call is rendered by the template itself
        assert '<tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>' in second
    else:
        assert '{"tool_calls": [{"name": "multiply", "arguments": {"a": 6, "b": 7}}]}' in second
    # and the whole record tabulates
    frame = pd.DataFrame(steps)
    assert list(frame.columns) == ["step", "name", "arguments", "id", "result", "error", "seconds", "status", "note"]
    assert frame["status"].tolist() == ["ok", "ok"] and frame["note"].isna().all()
    assert frame["result"].tolist() == [42, 43]


def test_a_raising_tool_feeds_its_error_back(agent, payload):
    def divide(a: float, b: float) -> float:
        """Divide a by b.

        Args:
            a: The dividend.
            b: The divisor.
        """
        return a / b

    forced = script(agent, ["TOOL_CALL: divide(a=1, b=0)", "TOOL_CALL: divide(a=1, b=4)", "It is 0.25."])
    response = run(agent.run_tools(payload("1/0, then 1/4?"), [divide], logits_processor=[forced]))
    first, second = response.metadata["tool_steps"]
    assert first["result"] is None and first["error"].startswith("ZeroDivisionError: division by zero")
    assert "divide" in first["error"]  # where it was raised
    assert second["result"] == 0.25 and second["error"] is None
    assert response.response == "It is 0.25." and response.metadata["steps"] == 3
    assert tool_result_text(agent, "divide", f"Error: {first['error']}") in prompts(agent, forced)[1]


def test_async_and_sync_tools(agent, payload):
    seen = {}

    async def fetch_price(item: str) -> float:
        """Fetch the price of an item.

        Args:
            item: The item.
        """
        await asyncio.sleep(0.01)
        seen["async_loop"] = asyncio.get_running_loop()
        return 2.5

    def stock(item: str) -> int:
        """Count an item in stock.

        Args:
            item: The item.
        """
        seen["sync_thread"] = threading.current_thread()
        return 7

    async def main():
        seen["loop"] = asyncio.get_running_loop()
        forced = script(agent, [
            '<tool_call>{"name": "fetch_price", "arguments": {"item": "tea"}}</tool_call>'
            '<tool_call>{"name": "stock", "arguments": {"item": "tea"}}</tool_call>',
            "Tea costs 2.5 and 7 are in stock.",
        ])
        return await agent.run_tools(payload("Tea?"), [fetch_price, stock], logits_processor=[forced]), forced

    response, forced = run(main())
    steps = response.metadata["tool_steps"]
    assert [(s["name"], s["result"], s["error"]) for s in steps] == [("fetch_price", 2.5, None), ("stock", 7, None)]
    assert steps[0]["seconds"] >= 0.01
    assert seen["async_loop"] is seen["loop"]  # awaited on the caller's loop
    assert seen["sync_thread"] is not threading.main_thread()  # a sync tool does not block the loop
    assert response.response == "Tea costs 2.5 and 7 are in stock."
    second = prompts(agent, forced)[1]
    assert tool_result_text(agent, "fetch_price", "2.5") in second and tool_result_text(agent, "stock", "7") in second


def test_unknown_and_description_only_tools_get_errors_back(agent, payload):
    calc = Calculator()
    lookup = {"name": "lookup", "description": "Look up a word."}
    forced = script(agent, ['TOOL_CALL: nope(x=1)\nTOOL_CALL: lookup(word="tea")\nTOOL_CALL: add(a=1, b=1)', "Done."])
    response = run(agent.run_tools(payload("Go"), [lookup, *calc.tools], logits_processor=[forced]))
    nope, described, added = response.metadata["tool_steps"]
    assert nope["error"].startswith("unknown tool 'nope'") and nope["result"] is None
    assert "offered only as a description" in described["error"]
    assert added["result"] == 2 and calc.calls == [("add", 1, 1)]
    assert response.response == "Done."
    assert "unknown tool 'nope'" in prompts(agent, forced)[1]


def test_max_steps_limit(agent, payload):
    ticks = []

    def tick() -> int:
        """Advance a counter."""
        ticks.append(1)
        return len(ticks)

    forced = script(agent, "TOOL_CALL: tick()")  # the model never stops calling
    response = run(agent.run_tools(payload("Count"), [tick], max_steps=3, logits_processor=[forced]))
    meta = response.metadata
    assert meta["steps"] == 3 and meta["max_steps_reached"] is True
    assert len(ticks) == 2 and [s["result"] for s in meta["tool_steps"]] == [1, 2]
    assert [c["name"] for c in response.tool_calls] == ["tick"]  # the last step's call is left unexecuted
    assert len(forced.prompts) == 3


def test_max_steps_must_be_a_positive_integer(agent, payload):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_steps"):
            run(agent.run_tools(payload("x"), [], max_steps=bad))


def test_answer_without_calls_ends_after_one_step(agent, payload):
    calc = Calculator()
    forced = script(agent, "No tool needed: 2.")
    response = run(agent.run_tools(payload("1+1?"), calc.tools, logits_processor=[forced]))
    assert response.response == "No tool needed: 2." and response.metadata["steps"] == 1
    assert response.metadata["tool_steps"] == [] and calc.calls == []


def test_stream_tools_yields_steps_as_events(agent, payload):
    calc = Calculator()
    forced = script(agent, [
        "<think>Multiply first.</think>TOOL_CALL: multiply(a=6, b=7)",
        "TOOL_CALL: add(a=42, b=1)",
        "The result is 43.",
    ])

    async def collect():
        loop = agent.stream_tools(payload("What is 6 * 7 + 1?"), calc.tools, logits_processor=[forced])
        return [event async for event in loop], loop

    events, loop = run(collect())
    kinds = [e.kind for e in events]
    assert kinds.count("tool_call") == 2 and kinds.count("tool_result") == 2 and kinds[-1] == "done"
    assert kinds.index("thinking") < kinds.index("tool_call") < kinds.index("tool_result")
    results = [e.data for e in events if e.kind == "tool_result"]
    assert [(r["name"], r["result"]) for r in results] == [("multiply", 42), ("add", 43)]
    assert "".join(e.text for e in events if e.kind == "text").endswith("The result is 43.")
    assert events[-1].data is loop.response and loop.response.metadata["tool_steps"] == loop.steps == results


def test_stopping_the_loop_keeps_the_steps_already_run(agent, payload):
    calc = Calculator()
    forced = script(agent, ["TOOL_CALL: multiply(a=6, b=7)",
                            "TOOL_CALL: add(a=42, b=1) " + "and more words " * 30])

    async def scenario():
        loop = agent.stream_tools(payload("What is 6 * 7 + 1?"), calc.tools, logits_processor=[forced])
        async for event in loop:
            if event.kind == "tool_result":
                loop.cancel()  # stop while the second step is about to generate
        return loop

    loop = run(scenario())
    assert calc.calls == [("multiply", 6, 7)]
    assert [s["name"] for s in loop.steps] == ["multiply"]
    assert loop.response.metadata["finish_reason"] == "cancelled"
    assert loop.response.metadata["tool_steps"] == loop.steps
    assert loop.response.metadata["max_steps_reached"] is False
