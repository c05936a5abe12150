"""Which generation settings answer correctly: the offline default model scored on twenty questions
with a checked expected answer, over several seeds per setting.

Each question has checks (regular expressions, matched case-insensitively, all of which must
match the answer): "What is the capital of France?" is right when the answer says Paris. Every
candidate setting answers every question once per seed (``--seeds``, default 5) on one loaded
model, with the repetition guard on and the settings the user leaves unset from the project
defaults, as a user would get them, except those the setting names. A greedy setting gives the same
tokens for every seed (the script checks it and reports it), so it answers each question for two
seeds only and its rate counts each question once.

Per setting it reports the correct rate with a 95% Wilson interval (over all answers; the answers
to one question are not independent, so read it as a guide), the questions right for every seed,
the answers the repetition guard ended, and the mean tokens per answer. It prints a Markdown table
and writes it with every answer to ``benchmarks/results/default_settings-<time>.md`` and ``.json``::

    .venv/bin/python benchmarks/default_settings.py                 # about 30-60 min on 2 busy CPU cores
    .venv/bin/python benchmarks/default_settings.py --seeds 2 --questions 5 --settings greedy,t0.2  # a quick look
    .venv/bin/python benchmarks/default_settings.py --side-by-side  # the old defaults (512 tokens, no guard,
                                                                    # temperature 0.7) next to today's, greedy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload  # noqa: E402
from midori_hf_nb.protocol import MemoryEntryData  # noqa: E402
from midori_hf_nb.stats import stats_of  # noqa: E402

SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Question:
    """A question, the checks its answer must pass (regular expressions, all must match,
    case-insensitive), and earlier turns of the conversation."""

    text: str
    checks: tuple[str, ...]
    turns: tuple[tuple[str, str], ...] = ()

    def correct(self, answer: str) -> bool:
        return all(re.search(check, answer, re.IGNORECASE | re.DOTALL) for check in self.checks)


#: Short factual, arithmetic and instruction questions within reach of a 135M chat model; the first
#: is the README's. Chosen before any setting was scored, and not changed after.
QUESTIONS = [
    Question("What is the capital of France?", (r"\bParis\b",)),
    Question("What is the capital of Japan?", (r"\bTokyo\b",)),
    Question("What is the capital of Italy?", (r"\bRome\b",)),
    Question("How many days are in a week?", (r"\b(7|seven)\b",)),
    Question("What is 2 + 2?", (r"\b(4|four)\b",)),
    Question("What is 12 times 12?", (r"\b144\b",)),
    Question("How many legs does a spider have?", (r"\b(8|eight)\b",)),
    Question("What color is the sky on a clear day?", (r"\bblue\b",)),
    Question("What is the largest planet in our solar system?", (r"\bJupiter\b",)),
    Question("Who wrote the play Romeo and Juliet?", (r"\bShakespeare\b",)),
    Question("What is the chemical formula of water?", (r"\bH(2|₂)O\b",)),
    Question("At how many degrees Celsius does water boil at sea level?", (r"\b100\b",)),
    Question("Translate 'hello' into Spanish.", (r"\bhola\b",)),
    Question("What is the opposite of 'hot'?", (r"\bcold\b",)),
    Question("What is the name of the planet we live on?", (r"\bEarth\b",)),
    Question("What language is mostly spoken in Brazil?", (r"\bPortuguese\b",)),
    Question("What is my name?", (r"\bAda\b",),
             (("user", "Hi, my name is Ada."), ("assistant", "Nice to meet you, Ada!"))),
    Question("Write a Python function that adds two numbers.", (r"\bdef \w+\(", r"\breturn\b")),
    Question("List three primary colors.", (r"\bred\b", r"\bblue\b", r"\b(yellow|green)\b")),
    Question("Repeat the word 'banana' three times.", (r"banana\W+banana\W+banana",)),
]

#: Candidate settings: each names what it sets; the rest is what a user who sets nothing gets.
SETTINGS: dict[str, dict] = {
    "greedy": {"greedy": True},
    "greedy, repetition_penalty 1.1": {"greedy": True, "repetition_penalty": 1.1},
    "t0.2": {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "top_k": 50},
    "t0.7": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50},
    "greedy, repetition_penalty 1.05": {"greedy": True, "repetition_penalty": 1.05},
    "greedy, repetition_penalty 1.2": {"greedy": True, "repetition_penalty": 1.2},
    "t0.2, repetition_penalty 1.1": {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "top_k": 50,
                                     "repetition_penalty": 1.1},
}
#: short names for --settings (the default runs the first four)
ALIASES = {"greedy": "greedy", "greedy-rp": "greedy, repetition_penalty 1.1", "t0.2": "t0.2", "t0.7": "t0.7",
           "greedy-rp1.05": "greedy, repetition_penalty 1.05", "greedy-rp1.2": "greedy, repetition_penalty 1.2",
           "t0.2-rp": "t0.2, repetition_penalty 1.1"}
DEFAULT_SETTINGS = ("greedy", "greedy-rp", "t0.2", "t0.7")


def payload(question: str, turns) -> object:
    memory = [MemoryEntryData(role=role, content=text) for role, text in turns]
    return make_payload(question, SYSTEM, memory=memory)


def answer(agent, question: str, turns, **overrides) -> dict:
    started = time.perf_counter()
    response = asyncio.run(agent.invoke(payload(question, turns), **overrides))
    stats = stats_of(response)
    return {"answer": response.response, "tokens": stats.completion_tokens, "finish": stats.finish_reason,
            "decode_path": stats.decode_path, "seconds": round(time.perf_counter() - started, 2)}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cell(text: str, limit: int = 160) -> str:
    """One table cell: line breaks shown as ⏎, pipes escaped, cut at ``limit`` characters."""
    flat = text.strip().replace("\r", "").replace("\n", " ⏎ ").replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class Score:
    """The answers of one setting and what they add up to."""

    name: str
    overrides: dict
    greedy: bool
    answers: list[dict] = field(default_factory=list)  # {"question": i, "seed": s, "correct": bool, ...}

    def summary(self, questions: list[Question]) -> dict:
        counted = [a for a in self.answers if not self.greedy or a["seed"] == self.answers[0]["seed"]]
        right = sum(a["correct"] for a in counted)
        low, high = wilson(right, len(counted))
        by_question = [[a for a in self.answers if a["question"] == i] for i in range(len(questions))]
        summary = {
            "setting": self.name, "overrides": self.overrides, "answers": len(counted), "correct": right,
            "rate": right / len(counted) if counted else 0.0, "wilson95": [low, high],
            "questions_always_right": sum(bool(q) and all(a["correct"] for a in q) for q in by_question),
            "repetition_endings": sum(a["finish"] == "repetition" for a in counted),
            "length_endings": sum(a["finish"] == "length" for a in counted),
            "mean_tokens": sum(a["tokens"] or 0 for a in counted) / len(counted) if counted else 0.0,
            "france": [a["correct"] for a in by_question[0]] if by_question and by_question[0] else [],
        }
        if self.greedy:
            summary["same_tokens_every_seed"] = all(len({a["answer"] for a in q}) <= 1 for q in by_question)
        return summary


def score(args: argparse.Namespace) -> None:
    names = [ALIASES[n] for n in (args.settings.split(",") if args.settings else DEFAULT_SETTINGS)]
    questions = QUESTIONS[: args.questions]
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False, max_new_tokens=args.max_new_tokens)
    asyncio.run(agent.load())
    scores = {n: Score(n, SETTINGS[n], greedy=bool(SETTINGS[n].get("greedy"))) for n in names}
    started = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for number, question in enumerate(questions):
            for name, entry in scores.items():
                if entry.greedy and seed > 2:
                    continue  # greedy: the same tokens for every seed (checked on seeds 1 and 2)
                result = answer(agent, question.text, question.turns, seed=seed, **entry.overrides)
                entry.answers.append({"question": number, "seed": seed, "correct": question.correct(result["answer"]),
                                      **result})
        done = {n: sum(a["correct"] for a in s.answers) for n, s in scores.items()}
        print(f"seed {seed} done after {time.perf_counter() - started:.0f} s: correct so far {done}", file=sys.stderr)
    asyncio.run(agent.unload_model())

    summaries = [s.summary(questions) for s in scores.values()]
    lines = [
        f"Offline default model {DEFAULT_MODEL}; {len(questions)} questions with checked answers; sampled settings "
        f"over seeds 1-{args.seeds}, greedy ones once per question (same tokens for seeds 1 and 2: checked); "
        f"max_new_tokens {args.max_new_tokens}, repetition guard on, system prompt {SYSTEM!r}.",
        "",
        "| setting | correct | rate (95% Wilson) | questions right every time | repetition endings | "
        "length endings | mean tokens | France right |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        low, high = s["wilson95"]
        same = "" if "same_tokens_every_seed" not in s else (
            ", same tokens every seed" if s["same_tokens_every_seed"] else ", TOKENS DIFFER BETWEEN SEEDS")
        france = f"{sum(s['france'])}/{len(s['france'])}"
        lines.append(f"| {s['setting']}{same} | {s['correct']}/{s['answers']} | {s['rate']:.0%} ({low:.0%}-{high:.0%}) | "
                     f"{s['questions_always_right']}/{len(questions)} | {s['repetition_endings']} | "
                     f"{s['length_endings']} | {s['mean_tokens']:.1f} | {france} |")
    lines += ["", "Correct answers per question (greedy settings: one answer per question):", "",
              "| question | " + " | ".join(scores) + " |", "|---|" + "---|" * len(scores)]
    for number, question in enumerate(questions):
        counts = []
        for entry in scores.values():
            mine = [a for a in entry.answers if a["question"] == number]
            mine = mine[:1] if entry.greedy else mine
            counts.append(f"{sum(a['correct'] for a in mine)}/{len(mine)}")
        lines.append(f"| {cell(question.text, 60)} | " + " | ".join(counts) + " |")
    lines += ["", "Wrong answers (first seed each):", ""]
    for name, entry in scores.items():
        seen = set()
        for a in entry.answers:
            if not a["correct"] and a["question"] not in seen:
                seen.add(a["question"])
                lines.append(f"- {name}, seed {a['seed']}: {questions[a['question']].text} → {cell(a['answer'], 120)}")
    table = "\n".join(lines)
    print(table)
    output = args.output or ROOT / "benchmarks" / "results" / f"default_settings-{time.strftime('%Y%m%d-%H%M%S')}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table + "\n")
    output.with_suffix(".json").write_text(json.dumps({
        "model": DEFAULT_MODEL, "seeds": args.seeds, "max_new_tokens": args.max_new_tokens,
        "questions": [{"text": q.text, "checks": q.checks, "turns": q.turns} for q in questions],
        "summaries": summaries,
        "answers": {name: entry.answers for name, entry in scores.items()},
        "seconds": round(time.perf_counter() - started, 1)}, indent=1, ensure_ascii=False))
    print(f"written: {output}", file=sys.stderr)


def side_by_side(args: argparse.Namespace) -> None:
    """The old defaults (512 new tokens, no repetition guard, temperature 0.7) and today's, one
    after the other on every question, greedy (``--sampled``: sampling, seed = question number)."""
    old = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False, max_new_tokens=512, temperature=0.7, top_p=0.9,
                                top_k=50, do_sample=True, stop_on_repetition=False)
    new = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False)
    asyncio.run(old.load())
    asyncio.run(new.load())
    call = new.resolve_settings()
    new_settings = {name: getattr(call.generation, name) for name in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                                     "do_sample")}
    rows = []
    for number, question in enumerate(QUESTIONS[: args.questions], start=1):
        overrides = {"seed": number} if args.sampled else {"greedy": True}
        rows.append({"question": question.text, "turns": question.turns,
                     "old": answer(old, question.text, question.turns, **overrides),
                     "new": answer(new, question.text, question.turns, **overrides)})
    asyncio.run(old.unload_model())
    asyncio.run(new.unload_model())
    mode = "sampled (seed = question number)" if args.sampled else "greedy"
    lines = [f"Default model {DEFAULT_MODEL}, {mode}. Old: max_new_tokens=512, no repetition guard"
             + (", temperature 0.7, top_p 0.9, top_k 50" if args.sampled else "")
             + f". New: {new_settings} (origins {dict(call.origins)}), repetition guard on.", "",
             "| # | question | old answer | new answer | tokens old → new | finish old → new |", "|---|---|---|---|---|---|"]
    for number, row in enumerate(rows, start=1):
        o, n = row["old"], row["new"]
        lines.append(f"| {number} | {cell(row['question'])} | {cell(o['answer'])} | {cell(n['answer'])} | "
                     f"{o['tokens']} → {n['tokens']} | {o['finish']} → {n['finish']} |")
    table = "\n".join(lines)
    print(table)
    output = args.output or ROOT / "benchmarks" / "results" / (
        f"default_settings-side-by-side-{'sampled-' if args.sampled else ''}{time.strftime('%Y%m%d-%H%M%S')}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table + "\n")
    output.with_suffix(".json").write_text(json.dumps({"mode": mode, "new_settings": new_settings,
                                                       "origins": dict(call.origins), "rows": rows}, indent=1))
    print(f"written: {output}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per sampled setting (default 5)")
    parser.add_argument("--settings", default=None,
                        help="comma-separated among " + ", ".join(ALIASES) + " (default: " + ",".join(DEFAULT_SETTINGS) + ")")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="answer only the first N questions")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per answer (default 64)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the Markdown (and .json next to it)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="instead: the old defaults next to today's on every question, greedy")
    parser.add_argument("--sampled", action="store_true", help="with --side-by-side: sample (seed = question number)")
    args = parser.parse_args()
    if args.settings and not set(args.settings.split(",")) <= set(ALIASES):
        parser.error(f"--settings: expected names among {', '.join(ALIASES)}")
    (side_by_side if args.side_by_side else score)(args)


if __name__ == "__main__":
    main()
