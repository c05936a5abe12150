"""Ten fixed questions answered by the offline default model with the old and the new defaults.

Old defaults: 512 new tokens and no repetition guard (``stop_on_repetition=False``). New defaults:
what an agent gets when it sets nothing (:data:`midori_hf_nb.config.GENERATION_DEFAULTS`, the model's
own ``generation_config.json`` where it has values, and the repetition guard). Both decode greedily
by default (``--sampled``: both sample with one seed per question, the old at temperature 0.7 and
the new at their own temperature), so the table shows what the settings change and nothing else.
Old and new answer each question one after the other, on one loaded model.

Prints a Markdown table (question, old answer, new answer, tokens, finish reason, seconds) and
writes it, with the full answers, under ``benchmarks/results/``::

    .venv/bin/python benchmarks/default_settings.py            # greedy (about 5-10 min on a laptop CPU)
    .venv/bin/python benchmarks/default_settings.py --sampled  # sampling: old temperature 0.7 against the new
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload  # noqa: E402
from midori_hf_nb.protocol import MemoryEntryData  # noqa: E402
from midori_hf_nb.stats import stats_of  # noqa: E402

SYSTEM = "You are a helpful assistant."
#: (question, earlier turns): the second is the loop the issue reports ("Ada, ada, ..." for 512 tokens)
QUESTIONS = [
    ("What is the capital of France?", []),
    ("What is my name?", [("user", "Hi, my name is Ada."), ("assistant", "Nice to meet you, Ada!")]),
    ("Write a Python function that adds two numbers.", []),
    ("List three primary colors.", []),
    ("How many days are in a week?", []),
    ("Translate 'good morning' into Spanish.", []),
    ("What is 12 times 12?", []),
    ("Give me one short tip for staying focused.", []),
    ("What does a CPU do?", []),
    ("Write a haiku about the sea.", []),
]


def payload(question: str, turns: list[tuple[str, str]]):
    memory = [MemoryEntryData(role=role, content=text) for role, text in turns]
    return make_payload(question, SYSTEM, memory=memory)


def cell(text: str, limit: int = 160) -> str:
    """One table cell: line breaks shown as ⏎, pipes escaped, cut at ``limit`` characters."""
    flat = text.strip().replace("\r", "").replace("\n", " ⏎ ").replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def answer(agent, question, turns, **overrides) -> dict:
    started = time.perf_counter()
    response = asyncio.run(agent.invoke(payload(question, turns), **overrides))
    stats = stats_of(response)
    return {"answer": response.response, "tokens": stats.completion_tokens, "finish": stats.finish_reason,
            "decode_path": stats.decode_path, "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sampled", action="store_true", help="sample (seed = question number) instead of greedy")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="answer only the first N questions")
    parser.add_argument("--output", type=Path, default=None, help="where to write the Markdown (and .json next to it)")
    args = parser.parse_args()

    old = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False, max_new_tokens=512, temperature=0.7, top_p=0.9,
                                top_k=50, do_sample=True, stop_on_repetition=False)
    new = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False)
    asyncio.run(old.load())
    asyncio.run(new.load())
    call = new.resolve_settings()
    new_settings = {name: getattr(call.generation, name) for name in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                                     "do_sample")}
    rows = []
    for number, (question, turns) in enumerate(QUESTIONS[: args.questions], start=1):
        overrides = {"seed": number} if args.sampled else {"greedy": True}
        rows.append({"question": question, "turns": turns,
                     "old": answer(old, question, turns, **overrides), "new": answer(new, question, turns, **overrides)})
        print(f"{number}: old {rows[-1]['old']['tokens']} tokens ({rows[-1]['old']['finish']}), "
              f"new {rows[-1]['new']['tokens']} tokens ({rows[-1]['new']['finish']})", file=sys.stderr)
    asyncio.run(old.unload_model())
    asyncio.run(new.unload_model())

    mode = "sampled (seed = question number)" if args.sampled else "greedy"
    lines = [
        f"Default model {DEFAULT_MODEL}, {mode}. Old: max_new_tokens=512, no repetition guard"
        + (", temperature 0.7, top_p 0.9, top_k 50" if args.sampled else "")
        + f". New: {new_settings} (origins {dict(call.origins)}), repetition guard on.",
        "",
        "| # | question | old answer | new answer | tokens old → new | finish old → new | seconds old → new |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        o, n = row["old"], row["new"]
        lines.append(f"| {number} | {cell(row['question'])} | {cell(o['answer'])} | {cell(n['answer'])} | "
                     f"{o['tokens']} → {n['tokens']} | {o['finish']} → {n['finish']} | {o['seconds']} → {n['seconds']} |")
    total_old = sum(r["old"]["seconds"] for r in rows)
    total_new = sum(r["new"]["seconds"] for r in rows)
    lines += ["", f"Total seconds: old {total_old:.1f}, new {total_new:.1f}; tokens: old "
              f"{sum(r['old']['tokens'] for r in rows)}, new {sum(r['new']['tokens'] for r in rows)}. "
              f"Decode paths: old {sorted({r['old']['decode_path'] for r in rows})}, "
              f"new {sorted({r['new']['decode_path'] for r in rows})}."]
    table = "\n".join(lines)
    print(table)
    output = args.output or ROOT / "benchmarks" / "results" / (
        f"default_settings-{'sampled-' if args.sampled else ''}{time.strftime('%Y%m%d-%H%M%S')}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table + "\n")
    output.with_suffix(".json").write_text(json.dumps({"mode": mode, "new_settings": new_settings,
                                                       "origins": dict(call.origins), "rows": rows}, indent=1))
    print(f"written: {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
