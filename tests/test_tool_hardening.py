"""The opt-in tool loop under bad tools, bad arguments and huge results, on real generations.

Every generation is a real ``generate`` on a tiny random model whose tokens are forced by
``ScriptedOutput``: the first step calls a tool, the second answers. Each case checks the step
record, that the loop went on to its answer, and the exact text the model was given back.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from typing import Optional

import pytest

from midori_hf_nb.testing import ScriptedOutput
from midori_hf_nb.tools import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TOOL_TIMEOUT

from .conftest import TEMPLATE_MODELS, agent_on_template, loaded_agent, run


@pytest.fixture(scope="module", params=TEMPLATE_MODELS)
def agent(request):
    """An agent on a template without tools support, then on one with it."""
    yield from agent_on_template(request, max_new_tokens=96)


@pytest.fixture(scope="module")
def plain_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=96)


@pytest.fixture
def release():
    """An event that blocked tools wait on; set after the test so their threads end."""
    event = threading.Event()
    yield event
    event.set()


def call_text(name: str, arguments: dict) -> str:
    """A tool call in the JSON format the parser reads exactly."""
    return json.dumps({"tool_calls": [{"name": name, "arguments": arguments}]})


def script(agent, texts) -> ScriptedOutput:
    return ScriptedOutput(agent.loaded_model.tokenizer, texts)


def prompts(agent, scripted: ScriptedOutput) -> list[str]:
    return [agent.loaded_model.tokenizer.decode(ids) for ids in scripted.prompts]


def fed_back(agent, name: str, text: str) -> str:
    """How a tool result appears in the next prompt of each template."""
    structured = getattr(agent, "structured", False)
    return f"<tool_response>{text}</tool_response>" if structured else f"Result of tool {name}: {text}"


def multiply_tool(calls: list):
    def multiply(a: float, b: float) -> float:
        """Multiply two numbers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        calls.append((a, b))
        return a * b

    return multiply


# --------------------------------------------------------------------------- the five failures


def test_wrong_argument_type_is_refused_and_the_model_recovers(agent, payload):
    calls: list = []
    forced = script(agent, [call_text("multiply", {"a": "ab", "b": 3}), call_text("multiply", {"a": 2, "b": 3}),
                            "It is 6."])
    response = run(agent.run_tools(payload("2 * 3?"), [multiply_tool(calls)], logits_processor=[forced]))

    assert calls == [(2, 3)]  # the invalid call never ran ('ab' * 3 would have been 'ababab')
    refused, ran = response.metadata["tool_steps"]
    assert refused["status"] == "invalid_arguments" and refused["result"] is None
    assert refused["error"] == ("invalid arguments for tool 'multiply', so it was not run: "
                                "argument 'a' is \"ab\" (a string), but the schema allows number")
    assert (ran["status"], ran["result"], ran["error"]) == ("ok", 6, None)
    assert response.response == "It is 6." and response.metadata["steps"] == 3
    assert fed_back(agent, "multiply", f"Error: {refused['error']}") in prompts(agent, forced)[1]


def test_a_tool_that_sleeps_forever_times_out(agent, payload, release):
    started = threading.Event()

    def wait_for_ever(topic: str) -> str:
        """Wait for news on a topic.

        Args:
            topic: The topic.
        """
        started.set()
        release.wait()  # nothing sets it while the loop runs
        return "news"

    forced = script(agent, [call_text("wait_for_ever", {"topic": "tea"}), "No news came."])

    async def scenario():
        loop = agent.stream_tools(payload("News?"), [wait_for_ever], tool_timeout=0.5, logits_processor=[forced])
        events = [event async for event in loop]
        return events, loop

    began = time.perf_counter()
    events, loop = run(scenario())
    assert time.perf_counter() - began < 20
    assert started.is_set()
    (step,) = loop.steps
    assert step["status"] == "timeout" and step["result"] is None
    assert step["error"] == "tool 'wait_for_ever' did not finish within 0.5 s (tool_timeout) and was abandoned"
    assert 0.5 <= step["seconds"] < 5
    assert "'midori-tool-wait_for_ever' is still running" in step["note"] and "cannot be stopped" in step["note"]
    assert [e.data["status"] for e in events if e.kind == "tool_result"] == ["timeout"]
    assert loop.response.response == "No news came."
    assert fed_back(agent, "wait_for_ever", f"Error: {step['error']}") in prompts(agent, forced)[1]
    thread = next(t for t in threading.enumerate() if t.name == "midori-tool-wait_for_ever")
    assert thread.daemon  # never holds up interpreter exit
    release.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_100kb_result_is_cut_to_max_result_chars(agent, payload):
    def read_log() -> str:
        """Read the whole log."""
        return "x" * 100_000

    forced = script(agent, [call_text("read_log", {}), "The log is long."])
    response = run(agent.run_tools(payload("Log?"), [read_log], logits_processor=[forced]))
    (step,) = response.metadata["tool_steps"]
    assert step["status"] == "ok" and step["result"] == "x" * 100_000  # the record keeps the whole result
    assert step["note"] == "text for the model cut to 4000 of 100000 characters (max_result_chars)"
    second = prompts(agent, forced)[1]
    assert fed_back(agent, "read_log", "x" * 4000 + "\n[truncated: 4000 of 100000 characters]") in second
    assert "x" * 4001 not in second
    assert response.response == "The log is long." and response.metadata["steps"] == 2


def test_a_100kb_result_is_cut_to_the_room_left_in_the_context_window(agent, payload):
    numbers = list(range(20_000))  # about 109 KB of JSON, one token per character: 4000 characters overflow
    full = json.dumps(numbers)

    def read_series() -> list:
        """Read the whole series."""
        return numbers

    forced = script(agent, [call_text("read_series", {}), "Many numbers."])
    response = run(agent.run_tools(payload("Series?"), [read_series], logits_processor=[forced]))
    (step,) = response.metadata["tool_steps"]
    assert step["status"] == "ok" and step["result"] is numbers
    shown = int(step["note"].split("cut to ")[-1].split(" of ")[0])
    assert 0 < shown < DEFAULT_MAX_RESULT_CHARS
    assert "to fit the context window" in step["note"]
    second = prompts(agent, forced)[1]
    assert fed_back(agent, "read_series", f"{full[:shown]}\n[truncated: {shown} of {len(full)} characters]") in second
    window = agent.config.context_window - agent.config.max_new_tokens
    assert len(forced.prompts[1]) <= window  # the next prompt fits
    assert response.response == "Many numbers."


def test_a_result_whose_str_raises_is_an_error_result(agent, payload):
    class Opaque:
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

        __repr__ = __str__

    def fetch() -> dict:
        """Fetch the record."""
        return {"value": Opaque()}

    forced = script(agent, [call_text("fetch", {}), "It could not be read."])
    response = run(agent.run_tools(payload("Fetch"), [fetch], logits_processor=[forced]))
    (step,) = response.metadata["tool_steps"]
    assert step["status"] == "bad_result" and step["result"] is None
    assert step["error"] == ("tool 'fetch' ran, but the result (a dict) cannot be written as text: "
                             "RuntimeError: no text for you")
    assert fed_back(agent, "fetch", f"Error: {step['error']}") in prompts(agent, forced)[1]
    assert response.response == "It could not be read."


def test_a_tool_raising_system_exit_is_an_error_result(agent, payload):
    def shut_down(code: int) -> str:
        """Shut the service down.

        Args:
            code: The exit code.
        """
        raise SystemExit(code)

    forced = script(agent, [call_text("shut_down", {"code": 3}), "It refused to stop."])
    response = run(agent.run_tools(payload("Stop"), [shut_down], logits_processor=[forced]))
    (step,) = response.metadata["tool_steps"]
    assert step["status"] == "error" and step["error"].startswith("SystemExit: 3 (at shut_down:")
    assert fed_back(agent, "shut_down", f"Error: {step['error']}") in prompts(agent, forced)[1]
    assert response.response == "It refused to stop."


# --------------------------------------------------------------------------- the table


class Opaque:
    """An object that cannot be written as text."""

    def __str__(self) -> str:
        raise ValueError("opaque")

    __repr__ = __str__


class Mute(Exception):
    """An exception whose message cannot be read."""

    def __str__(self) -> str:
        raise RuntimeError("mute")


def make_tools(ran: list, release: threading.Event) -> list:
    """One tool per kind of trouble; each records that it ran."""

    def multiply(a: float, b: float) -> float:
        """Multiply two numbers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        ran.append("multiply")
        return a * b

    def weather(city: str, unit: str = "celsius") -> str:
        """Get the weather.

        Args:
            city: The city.
            unit: The unit (choices: ["celsius", "fahrenheit"])
        """
        ran.append("weather")
        return f"Sunny in {city}"

    def total(values: list[int], scale: Optional[int] = None) -> int:
        """Add numbers up.

        Args:
            values: The numbers.
            scale: A factor, or null for none.
        """
        ran.append("total")
        return sum(values) * (scale or 1)

    def tag(name: str, **extra: str) -> str:
        """Tag something.

        Args:
            name: The name.
            extra: More tags.
        """
        ran.append("tag")
        return ",".join([name, *sorted(extra)])

    def stall() -> str:
        """Wait for ever, in a thread."""
        ran.append("stall")
        release.wait()
        return "late"

    async def astall() -> str:
        """Wait for ever, on the loop."""
        ran.append("astall")
        await asyncio.sleep(3600)
        return "late"

    def leave(code: int) -> str:
        """Exit the process.

        Args:
            code: The exit code.
        """
        ran.append("leave")
        raise SystemExit(code)

    async def aleave() -> str:
        """Exit the process from a coroutine."""
        ran.append("aleave")
        raise SystemExit(4)

    def close() -> str:
        """Raise GeneratorExit."""
        ran.append("close")
        raise GeneratorExit()

    def self_cancel() -> str:
        """Raise CancelledError without anyone cancelling."""
        ran.append("self_cancel")
        raise asyncio.CancelledError()

    def broken() -> int:
        """Raise an ordinary error."""
        ran.append("broken")
        return {}["missing"]

    def mute() -> str:
        """Raise an exception whose message cannot be read."""
        ran.append("mute")
        raise Mute()

    def shout() -> str:
        """Raise an exception with a 50,000-character message."""
        ran.append("shout")
        raise ValueError("A" * 50_000)

    def opaque() -> str:
        """Return an object whose str() raises."""
        ran.append("opaque")
        return Opaque()

    def nested_opaque() -> dict:
        """Return a dict holding such an object."""
        ran.append("nested_opaque")
        return {"ok": 1, "bad": Opaque()}

    async def afetch() -> dict:
        """Return a record from a coroutine."""
        ran.append("afetch")
        return {"price": 2.5, "tags": ["tea"]}

    async def aopaque() -> str:
        """Return, from a coroutine, an object whose str() raises."""
        ran.append("aopaque")
        return Opaque()

    def loop_list() -> list:
        """Return a list that contains itself."""
        ran.append("loop_list")
        items: list = [1]
        items.append(items)
        return items

    def big() -> str:
        """Return 100 KB of text."""
        ran.append("big")
        return "y" * 100_000

    def lazy() -> object:
        """A sync tool that returns a coroutine that never ends."""
        ran.append("lazy")
        return asyncio.sleep(3600)

    return [multiply, weather, total, tag, stall, astall, leave, aleave, close, self_cancel, broken, mute, shout,
            opaque, nested_opaque, afetch, aopaque, loop_list, big, lazy, {"name": "lookup", "description": "Look a word up."}]


# id, class, call (name, arguments), ran, status, error fragments, note fragment, text the model gets (fragment)
CASES = [
    ("string-for-number", "arguments", ("multiply", {"a": "ab", "b": 3}), False, "invalid_arguments",
     ["argument 'a' is \"ab\" (a string), but the schema allows number"], None, "so it was not run"),
    ("missing-required", "arguments", ("multiply", {"a": 2}), False, "invalid_arguments",
     ["required argument 'b' (number) is missing"], None, "required argument 'b'"),
    ("unknown-argument", "arguments", ("multiply", {"a": 2, "b": 3, "c": 4}), False, "invalid_arguments",
     ["unknown argument 'c' is 4 (an integer), but the tool takes 'a', 'b'"], None, "unknown argument 'c'"),
    ("several-problems", "arguments", ("multiply", {"b": True, "z": None}), False, "invalid_arguments",
     ["argument 'b' is true (a boolean), but the schema allows number", "required argument 'a' (number) is missing",
      "unknown argument 'z' is null, but the tool takes 'a', 'b'"], None, "argument 'b' is true"),
    ("not-in-enum", "arguments", ("weather", {"city": "Oslo", "unit": "kelvin"}), False, "invalid_arguments",
     ["argument 'unit' is \"kelvin\" (a string), but the schema allows only one of [\"celsius\", \"fahrenheit\"]"],
     None, "kelvin"),
    ("wrong-list-item", "arguments", ("total", {"values": [1, "x"]}), False, "invalid_arguments",
     ["argument 'values[1]' is \"x\" (a string), but the schema allows integer"], None, "values[1]"),
    ("optional-null-is-valid", "arguments", ("total", {"values": [1, 2], "scale": None}), True, "ok", [], None, "3"),
    ("kwargs-take-extras", "arguments", ("tag", {"name": "tea", "green": "yes"}), True, "ok", [], None, "tea,green"),
    ("sync-sleeps-forever", "timeout", ("stall", {}), True, "timeout",
     ["tool 'stall' did not finish within 0.5 s (tool_timeout) and was abandoned"], "is still running",
     "did not finish within 0.5 s"),
    ("async-sleeps-forever", "timeout", ("astall", {}), True, "timeout",
     ["tool 'astall' did not finish within 0.5 s"], None, "was abandoned"),
    ("sync-returns-endless-coroutine", "timeout", ("lazy", {}), True, "timeout",
     ["tool 'lazy' did not finish within 0.5 s"], None, "was abandoned"),
    ("system-exit", "base-exception", ("leave", {"code": 3}), True, "error", ["SystemExit: 3 (at leave:"], None,
     "Error: SystemExit: 3"),
    ("async-system-exit", "base-exception", ("aleave", {}), True, "error", ["SystemExit: 4 (at aleave:"], None,
     "Error: SystemExit: 4"),
    ("generator-exit", "base-exception", ("close", {}), True, "error", ["GeneratorExit (at close:"], None,
     "Error: GeneratorExit"),
    ("tool-raises-cancelled-error", "base-exception", ("self_cancel", {}), True, "error",
     ["CancelledError (at self_cancel:"], None, "Error: CancelledError"),
    ("ordinary-exception", "exception", ("broken", {}), True, "error", ["KeyError: 'missing' (at broken:"], None,
     "KeyError"),
    ("exception-message-raises", "exception", ("mute", {}), True, "error",
     ["Mute: <its message cannot be read: RuntimeError> (at mute:"], None, "cannot be read"),
    ("huge-exception-message", "size", ("shout", {}), True, "error", ["ValueError: AAAA"],
     "cut to 4000 of", "[truncated: 4000 of 500"),
    ("str-raises", "result-text", ("opaque", {}), True, "bad_result",
     ["tool 'opaque' ran, but the result (an Opaque) cannot be written as text: ValueError: opaque"], None,
     "cannot be written as text"),
    ("nested-repr-raises", "result-text", ("nested_opaque", {}), True, "bad_result",
     ["the result (a dict) cannot be written as text: ValueError: opaque"], None, "cannot be written as text"),
    ("async-result-as-json", "result-text", ("afetch", {}), True, "ok", [], None, '{"price": 2.5, "tags": ["tea"]}'),
    ("async-str-raises", "result-text", ("aopaque", {}), True, "bad_result",
     ["tool 'aopaque' ran, but the result (an Opaque) cannot be written as text: ValueError: opaque"], None,
     "cannot be written as text"),
    ("circular-result-falls-back-to-str", "result-text", ("loop_list", {}), True, "ok", [], None, "[1, [...]]"),
    ("100kb-result", "size", ("big", {}), True, "ok", [], "cut to 4000 of 100000 characters",
     "y" * 4000 + "\n[truncated: 4000 of 100000 characters]"),
    ("unknown-tool", "name", ("launch", {"count": 1}), False, "unknown_tool", ["unknown tool 'launch'; available:"],
     None, "unknown tool 'launch'"),
    ("description-only-tool", "name", ("lookup", {"word": "tea"}), False, "not_runnable",
     ["offered only as a description"], None, "nothing to run"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}:{c[0]}" for c in CASES])
def test_bad_tools_and_bad_calls(plain_agent, payload, release, case):
    _, _, (name, arguments), should_run, status, error_parts, note_part, fed_part = case
    ran: list = []
    forced = script(plain_agent, [call_text(name, arguments), "Done."])
    response = run(plain_agent.run_tools(payload("Go"), make_tools(ran, release), tool_timeout=0.5,
                                         logits_processor=[forced]))

    (step,) = response.metadata["tool_steps"]
    assert (step["name"], step["arguments"], step["status"]) == (name, arguments, status)
    assert ran == ([name] if should_run else [])
    if status == "ok":
        assert step["error"] is None
    else:
        assert step["result"] is None and step["error"]
        for part in error_parts:
            assert part in step["error"], (part, step["error"])
    if note_part is None:
        assert step["note"] is None
    else:
        assert note_part in step["note"]
    assert response.response == "Done." and response.metadata["steps"] == 2  # the loop went on
    second = prompts(plain_agent, forced)[1]
    assert f"Result of tool {name}: " in second and fed_part in second
    assert len(second) < 12_000  # no result reaches the model unbounded


def test_the_table_covers_every_status_and_class():
    assert len(CASES) >= 12
    assert {c[4] for c in CASES} == {"ok", "error", "invalid_arguments", "timeout", "bad_result", "unknown_tool",
                                     "not_runnable"}
    assert {c[1] for c in CASES} == {"arguments", "timeout", "base-exception", "exception", "size", "result-text",
                                     "name"}


# --------------------------------------------------------------------------- what still passes through


def test_keyboard_interrupt_from_a_tool_is_not_contained(plain_agent, payload):
    def interrupt() -> str:
        """Raise KeyboardInterrupt."""
        raise KeyboardInterrupt()

    forced = script(plain_agent, [call_text("interrupt", {}), "Never."])
    with pytest.raises(KeyboardInterrupt):
        run(plain_agent.run_tools(payload("Go"), [interrupt], logits_processor=[forced]))
    assert len(forced.prompts) == 1  # the loop did not go on


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_cancelling_the_loop_while_a_tool_runs_still_cancels(plain_agent, payload, release, kind):
    state = {"cancelled": False}
    started = threading.Event()

    async def watch() -> str:
        """Watch for ever."""
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return "never"

    def block() -> str:
        """Block for ever."""
        started.set()
        release.wait()
        return "never"

    tool = watch if kind == "async" else block
    forced = script(plain_agent, [call_text(tool.__name__, {}), "Never."])

    async def scenario():
        task = asyncio.create_task(plain_agent.run_tools(payload("Go"), [tool], tool_timeout=None,
                                                         logits_processor=[forced]))
        while not started.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task

    task = run(scenario())
    assert task.cancelled()
    assert len(forced.prompts) == 1
    if kind == "async":
        assert state["cancelled"] is True  # the tool itself was cancelled


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("field,value,allowed", [
    ("tool_timeout", 0, "a positive number of seconds"),
    ("tool_timeout", -1.5, "a positive number of seconds"),
    ("tool_timeout", math.nan, "a positive number of seconds"),
    ("tool_timeout", math.inf, "or None for no limit"),
    ("tool_timeout", "30", "a positive number of seconds"),
    ("tool_timeout", True, "a positive number of seconds"),
    ("max_result_chars", 0, "a positive integer number of characters"),
    ("max_result_chars", -10, "a positive integer number of characters"),
    ("max_result_chars", 2.5, "a positive integer number of characters"),
    ("max_result_chars", None, "a positive integer number of characters"),
    ("max_result_chars", False, "a positive integer number of characters"),
])
def test_options_are_validated_before_anything_runs(plain_agent, payload, field, value, allowed):
    ran = []

    def tick() -> int:
        """Count."""
        ran.append(1)
        return 1

    with pytest.raises(ValueError) as info:
        plain_agent.stream_tools(payload("x"), [tick], **{field: value})
    assert f"{field}={value!r} is not allowed" in str(info.value) and allowed in str(info.value)
    with pytest.raises(ValueError, match=field):
        run(plain_agent.run_tools(payload("x"), [tick], **{field: value}))
    assert ran == []


def test_defaults_and_no_timeout(plain_agent, payload):
    assert (DEFAULT_TOOL_TIMEOUT, DEFAULT_MAX_RESULT_CHARS) == (30.0, 4000)

    def slowish() -> str:
        """Take a moment."""
        time.sleep(0.3)
        return "z" * 50

    forced = script(plain_agent, [call_text("slowish", {}), "Done."])
    response = run(plain_agent.run_tools(payload("Go"), [slowish], tool_timeout=None, max_result_chars=20,
                                         logits_processor=[forced]))
    (step,) = response.metadata["tool_steps"]
    assert step["status"] == "ok" and step["seconds"] >= 0.3 and step["result"] == "z" * 50
    assert "Result of tool slowish: " + "z" * 20 + "\n[truncated: 20 of 50 characters]" in prompts(plain_agent, forced)[1]
