"""evaluate() batched against one by one: answers per second and verdicts per second, in one run.

Runs the same evaluation (40 items x 2 system prompts x 3 repeats by default: 240 answers, each
judged by the same offline default model under the verdict schema) twice on one loaded model:
batched (answers and verdicts at evaluate()'s default batch sizes) and one by one (``batch_size=1``
for the answers and the judge), alternating which goes first over the rounds. The phases are
timed from the events evaluate() reports: the answers phase from the end of its untimed warm-up
to the judge's model being ready, the verdicts phase from there to the end. One small untimed
evaluation first pays what the process's first answers and first constrained verdicts cost once. Verdicts per second count the judge calls made
(cached repeats are not calls). It prints the rates and the ratios batched / one by one and writes
everything to ``benchmarks/results/evaluate_batched-<time>.json``.

    python benchmarks/evaluate_batched.py              # 40 items, 1 round
    python benchmarks/evaluate_batched.py --rounds 2   # both orders
    python benchmarks/evaluate_batched.py --smoke      # 4 items, 1 repeat: checks that it runs

Answers are sampled (temperature 0.7, seeded) so the repeats differ and the judge has distinct
answers to grade; sampled answers of a batch depend on the batch, so the two modes grade
different (equally long) answers. The machine may be shared: only the ratios, measured in the
same run, mean anything; the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEMS = {"terse": "Answer with the number only.", "tutor": "You are a patient maths tutor. Explain briefly."}


def items(count: int) -> list[dict]:
    """Sums with their answers: a deterministic check and a rubric for the judge."""
    out = []
    for i in range(count):
        a, b = 3 + (7 * i) % 41, 2 + (11 * i) % 37
        out.append({"prompt": f"What is {a} + {b}?", "expected": str(a + b), "id": f"sum-{i}",
                    "assert": [{"type": "contains"}, {"type": "llm-rubric", "value": f"The answer states that the sum is {a + b}."}]})
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def measure(agent, test_items, mode: str, args) -> dict:
    from midori_hf_nb import Judge, evaluate

    size = 1 if mode == "one_by_one" else None
    marks: dict[str, float] = {}

    def on_event(event) -> None:
        if event.event.kind == "model_loaded":
            marks.setdefault(event.phase, time.perf_counter())
        elif event.event.kind == "warmup":  # the answers' untimed warm-up: timing starts after it
            marks[event.phase] = time.perf_counter()

    judge = Judge(agent, batch_size=size, max_reason_chars=args.reason_chars)
    ev = evaluate(test_items, systems=SYSTEMS, settings={"temperature": [0.7], "max_new_tokens": [args.max_new_tokens]},
                  models=agent, judge=judge, repeats=args.repeats, seed=0, batch_size=size, on_event=on_event,
                  progress=False)
    end = time.perf_counter()
    answers = int((ev.answers["status"] == "ok").sum())
    counts = ev.verdict_counts()
    asked = counts["scored"] + counts["unscored"] + counts["error"] - counts["cached"]
    errors = ev.scores["judge_error"].dropna()
    answer_seconds = marks["verdicts"] - marks["answers"]
    verdict_seconds = end - marks["verdicts"]
    return {"mode": mode, "answers": answers, "answer_seconds": answer_seconds, "answers_per_second": answers / answer_seconds,
            "verdicts_asked": asked, "verdict_counts": counts, "verdict_seconds": verdict_seconds,
            "verdicts_per_second": asked / verdict_seconds if verdict_seconds > 0 else None,
            "answer_batch_size": int(ev.answers["batch_size"].max()),
            "judge_batch_size": int(ev.scores["judge_batch_size"].max()) if asked else None,
            "pass_rates": dict(zip(ev.summary()["config"], ev.summary()["pass_rate"])),
            "first_judge_error": errors.iloc[0] if len(errors) else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="new tokens per answer")
    parser.add_argument("--reason-chars", type=int, default=80, help="the longest reason a verdict may give")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (batched, one by one), order alternating")
    parser.add_argument("--smoke", action="store_true", help="4 items, 1 repeat, 8-token answers")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.repeats, args.max_new_tokens = 4, 1, 8

    import torch

    from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent

    agent = HuggingFaceLocalAgent(DEFAULT_MODEL, progress=False)
    agent.load_sync()
    test_items = items(args.items)
    # untimed: the first answers and the first constrained verdicts of the process pay one-time costs
    measure(agent, items(2), "batched", argparse.Namespace(**{**vars(args), "repeats": 1}))
    print(f"{DEFAULT_MODEL}: {args.items} items x {len(SYSTEMS)} system prompts x {args.repeats} repeats, "
          f"{torch.get_num_threads()} torch thread(s)", flush=True)
    load_before = load_average()
    runs, ratios = [], []
    out = args.out or ROOT / "benchmarks" / "results" / \
        f"evaluate_batched-{'smoke-' if args.smoke else ''}{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every mode, so a long run that is stopped keeps what it measured
        record = {"benchmark": "evaluate_batched", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "smoke": args.smoke, "model": DEFAULT_MODEL, "items": args.items, "systems": len(SYSTEMS),
                  "repeats": args.repeats, "max_new_tokens": args.max_new_tokens, "reason_chars": args.reason_chars,
                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "platform": platform.platform(), "load_average_before": load_before,
                  "load_average_after": load_average(), "ratios": ratios, "runs": runs}
        out.write_text(json.dumps(record, indent=2, ensure_ascii=False))

    for round_index in range(args.rounds):
        order = ["batched", "one_by_one"] if round_index % 2 == 0 else ["one_by_one", "batched"]
        results = {}
        for mode in order:
            r = results[mode] = measure(agent, test_items, mode, args)
            r["round"] = round_index
            runs.append(r)
            write()
            print(f"round {round_index} {mode:>10}: {r['answers']} answers in {r['answer_seconds']:.1f} s "
                  f"({r['answers_per_second']:.2f}/s, batch {r['answer_batch_size']}); {r['verdicts_asked']} verdicts in "
                  f"{r['verdict_seconds']:.1f} s ({r['verdicts_per_second'] or 0:.2f}/s, batch {r['judge_batch_size']}); "
                  f"verdicts {r['verdict_counts']}", flush=True)
        b, o = results["batched"], results["one_by_one"]
        ratios.append({"answers": b["answers_per_second"] / o["answers_per_second"],
                       "verdicts": (b["verdicts_per_second"] or 0) / o["verdicts_per_second"]
                       if o["verdicts_per_second"] else None})
        print(f"round {round_index} batched / one by one: answers {ratios[-1]['answers']:.2f}x, "
              f"verdicts {ratios[-1]['verdicts'] or 0:.2f}x", flush=True)
    agent.unload_model_sync()
    write()
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
