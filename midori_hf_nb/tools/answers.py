"""Tool calls in an answer, for every agent (local or served): the calls a parser or a server
found attached to the response with unique ids and marked when not offered, and the final calls
matched to those a stream announced live."""

from __future__ import annotations

from ..parsing import parse_tool_calls_detailed, unique_ids
from ..stats import ResponseStats
from .schemas import tool_names


def attach_tool_calls(answer: str, blocks: list[str], found_calls: list[dict], found_errors: list[str],
                      schemas: list[dict], stats: ResponseStats, *, tools_in_template: bool | None,
                      ) -> tuple[str, list[str], list[dict] | None]:
    """The tool calls of an answer: ``found_calls`` (read by the tokenizer or sent by a server) then
    those the tag parser finds in ``answer``, with unique ids, each marked ``unknown`` when
    ``schemas`` does not offer it. Returns the answer without the calls, the reasoning blocks (prose
    written ahead of the calls joins them) and the calls (None without any); fills the tool fields
    of ``stats``."""
    parsed = parse_tool_calls_detailed(answer)
    parsed.calls = unique_ids(found_calls + parsed.calls)
    parsed.errors = found_errors + parsed.errors
    offered = set(tool_names(schemas))
    for found in parsed.calls:
        if found["name"] not in offered:
            found["unknown"] = True
    if parsed.calls and parsed.prose_before_calls:  # reasoning written ahead of the calls
        blocks, answer = [*blocks, parsed.prose_before_calls], parsed.answer
    else:
        answer = parsed.text
    stats.tools_offered = sorted(offered)
    stats.tools_in_template = tools_in_template
    stats.tool_parse_errors = list(parsed.errors)
    stats.unknown_tool_calls = [c["name"] for c in parsed.calls if c["name"] not in offered]
    return answer, blocks, parsed.calls or None


def adopt_live_ids(calls: list[dict], live_calls: list[dict]) -> list[dict]:
    """Give the final calls the ids of the matching calls announced live; return those not announced."""
    unmatched = list(live_calls)
    missing = []
    for found in calls:
        match = next((c for c in unmatched if c["name"] == found["name"] and c["arguments"] == found["arguments"]),
                     None)
        if match is None:
            missing.append(found)
        else:
            unmatched.remove(match)
            found["id"] = match["id"]
    unique_ids(calls)
    return missing
