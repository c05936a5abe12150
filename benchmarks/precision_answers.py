"""Greedy answers of the offline default model in several weight precisions, compared and scored.

    python benchmarks/precision_answers.py                    # rows fp32, bf16, int4, source (about 5-10 min)
    python benchmarks/precision_answers.py --max-new-tokens 48 --rows fp32,source

Every row is an agent on ``DEFAULT_MODEL`` with greedy decoding and the row's options; the first
row (``fp32``, exact float32) is the reference. Questions: the twenty scored questions of
``default_settings.py`` (each with checks its correct answer passes). For each row:

* **correct**: answers that pass their question's checks (``default_settings.Question.correct``);
* **same as fp32**: answers identical to the reference's, word for word;
* **shared prefix**: the mean share of the reference's words an answer repeats before it first
  differs (1.0 = identical);

and the answers themselves, side by side, in ``benchmarks/results/precision_answers-<time>.md``
(and ``.json``). Rows run one after another in one process.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_settings import QUESTIONS, cell, payload  # noqa: E402

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent  # noqa: E402

ROWS = {
    "fp32": {"torch_dtype": "float32", "quantize_weights": None},
    "bf16": {"quantize_weights": None},
    "bf16-unfused": {"quantize_weights": None, "fuse_projections": False},
    "int8": {"quantize_weights": "int8"},
    "int4": {"quantize_weights": "int4"},
    "source": {"quantize_weights": "auto"},
}


def shared_prefix(a: list[str], b: list[str]) -> float:
    """Share of ``b`` (the reference) that ``a`` repeats before the first difference."""
    if not b:
        return 1.0 if not a else 0.0
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / len(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="fp32,bf16,int4,source")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    rows = args.rows.split(",")
    questions = QUESTIONS
    answers: dict[str, list[dict]] = {}
    loaded: dict[str, dict] = {}
    for row in rows:
        agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False, do_sample=False,
                                      max_new_tokens=args.max_new_tokens, **ROWS[row])
        asyncio.run(agent.load())
        loaded[row] = agent.loaded_model.footprint()
        answers[row] = []
        started = time.perf_counter()
        for question in questions:
            response = asyncio.run(agent.invoke(payload(question.text, question.turns), greedy=True))
            answers[row].append({"answer": response.response})
        print(f"{row}: {time.perf_counter() - started:.1f} s ({loaded[row]})", file=sys.stderr)
        asyncio.run(agent.unload_model())
    reference = rows[0]
    scores = {}
    for row in rows:
        correct = sum(1 for q, a in zip(questions, answers[row]) if q.correct(a["answer"]))
        same = sum(1 for a, r in zip(answers[row], answers[reference]) if a["answer"].strip() == r["answer"].strip())
        prefix = [shared_prefix(a["answer"].split(), r["answer"].split())
                  for a, r in zip(answers[row], answers[reference])]
        scores[row] = {"correct": correct, "same_as_reference": same,
                       "questions": len(questions), "shared_prefix": sum(prefix) / len(prefix),
                       "quantization": loaded[row].get("quantization"), "head": loaded[row].get("head_quantization"),
                       "dtype": loaded[row].get("dtype"), "weights_bytes": loaded[row].get("bytes")}
    lines = [f"Default model, greedy, {args.max_new_tokens} new tokens at most; reference row: {reference}.", "",
             "| row | dtype | quantization (head) | weights MB | correct | same as " + reference +
             " | shared prefix (words) |",
             "|---|---|---|---|---|---|---|"]
    for row, s in scores.items():
        lines.append(f"| {row} | {s['dtype']} | {s['quantization']} ({s['head']}) | {s['weights_bytes'] / 1e6:.0f} | "
                     f"{s['correct']}/{s['questions']} | {s['same_as_reference']}/{s['questions']} | "
                     f"{s['shared_prefix']:.2f} |")
    lines += ["", "| # | question | " + " | ".join(rows) + " |", "|---|---|" + "---|" * len(rows)]
    for number, question in enumerate(questions, start=1):
        lines.append(f"| {number} | {cell(question.text)} | "
                     + " | ".join(("✓ " if question.correct(answers[row][number - 1]["answer"]) else "✗ ")
                                  + cell(answers[row][number - 1]["answer"], 120) for row in rows) + " |")
    table = "\n".join(lines)
    print(table)
    output = args.output or ROOT / "benchmarks" / "results" / f"precision_answers-{time.strftime('%Y%m%d-%H%M%S')}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table + "\n")
    output.with_suffix(".json").write_text(json.dumps({"rows": {r: ROWS[r] for r in rows}, "scores": scores,
                                                       "questions": [q.text for q in questions],
                                                       "answers": answers}, indent=1))
    print(f"written: {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
