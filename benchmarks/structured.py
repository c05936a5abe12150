"""Structured output: how often the default model's answers match a small schema without and with
the constraint (``response_format``), and what the constraint costs in decode speed.

20 prompts, each asking for a JSON object of a given small schema (4 schemas x 5 texts), answered
greedily by the offline default model, once free and once constrained, side by side (the two
runs of a prompt follow each other, and which goes first alternates). An answer is *valid* when
its whole text is JSON matching the schema; *valid somewhere* also counts a matching JSON object
found inside the text (after prose, in a code fence). Decode tok/s is the agent's own statistic
(tokens after the first over the time from the first to the last token); the ratio is the median
constrained over the median free, on the same machine in the same run. Free and constrained answers
are different texts (free ones are longer, with whitespace), so the script also times the
constraint alone: each constrained answer replayed token by token through a fresh logits processor.

    .venv/bin/python benchmarks/structured.py            # 20 prompts, 96 new tokens (a few minutes)
    .venv/bin/python benchmarks/structured.py --smoke    # 2 prompts, 24 tokens: checks that it runs

Results are printed and written to ``benchmarks/results/structured-<time>.json`` (smoke runs to
``structured-<time>-smoke.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload  # noqa: E402
from midori_hf_nb.stats import stats_of  # noqa: E402


class Person(BaseModel):
    name: str
    age: int


class City(BaseModel):
    city: str
    country: str
    population: int


class Book(BaseModel):
    title: str
    author: str
    year: int


class Weather(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


SCHEMAS = {
    Person: ("name (string) and age (integer)", [
        "Ada Lovelace was 36 years old when she died.",
        "My neighbour Tom turned 52 last week.",
        "Maria, aged 29, works as a nurse in Lisbon.",
        "The youngest player on the team is Kenji, who is 17.",
        "Grandpa Joe celebrated his 90th birthday yesterday.",
    ]),
    City: ("city (string), country (string) and population (integer)", [
        "Paris, the capital of France, has about 2100000 inhabitants.",
        "Tokyo in Japan is home to roughly 14000000 people.",
        "Nairobi, Kenya, has a population of around 4400000.",
        "About 650000 people live in Oslo, Norway.",
        "Toronto is the largest city in Canada with 2800000 residents.",
    ]),
    Book: ("title (string), author (string) and year (integer)", [
        "Pride and Prejudice was written by Jane Austen and published in 1813.",
        "George Orwell published Nineteen Eighty-Four in 1949.",
        "In 1851 Herman Melville released Moby-Dick.",
        "Frankenstein by Mary Shelley first appeared in 1818.",
        "The Hobbit, by J. R. R. Tolkien, came out in 1937.",
    ]),
    Weather: ("city (string), temperature_c (number) and sunny (true or false)", [
        "It is 21 degrees and sunny in Madrid today.",
        "Rain in London, only 12 degrees.",
        "Berlin: cloudy, 8 degrees Celsius.",
        "A bright sunny day in Cairo at 34 degrees.",
        "Oslo is freezing at -5 degrees under grey skies.",
    ]),
}


def prompts() -> list[tuple[type[BaseModel], str]]:
    """The 20 (schema, user message) pairs."""
    out = []
    for model, (fields, texts) in SCHEMAS.items():
        for text in texts:
            out.append((model, f"{text}\nAnswer only with a JSON object with the keys {fields}."))
    return out


def valid_whole(model: type[BaseModel], text: str) -> bool:
    """The whole answer is JSON matching the schema."""
    try:
        model.model_validate_json(text.strip())
    except (ValidationError, ValueError):
        return False
    return True


def valid_somewhere(model: type[BaseModel], text: str) -> bool:
    """Some JSON object inside the answer matches the schema (prose or a code fence around it)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            model.model_validate(value)
            return True
        except (ValueError, ValidationError):
            start = text.find("{", start + 1)
    return False


async def answer(agent, model, message: str, constrained: bool, max_new_tokens: int) -> dict:
    payload = make_payload(message, "You are a helpful assistant.")
    options = {"max_new_tokens": max_new_tokens}
    if constrained:
        options["response_format"] = model
    response = await agent.invoke(payload, **options)
    stats = stats_of(response)
    return {
        "schema": model.__name__, "constrained": constrained, "text": response.response,
        "valid": valid_whole(model, response.response), "valid_somewhere": valid_somewhere(model, response.response),
        "parsed": getattr(response, "parsed", None) is not None, "finish_reason": stats.finish_reason,
        "completion_tokens": stats.completion_tokens, "decode_tokens_per_second": stats.decode_tokens_per_second,
        "decode_path": stats.decode_path,
    }


def summary(rows: list[dict], constrained: bool) -> dict:
    mine = [r for r in rows if r["constrained"] == constrained]
    speeds = [r["decode_tokens_per_second"] for r in mine if r["decode_tokens_per_second"]]
    return {
        "answers": len(mine),
        "valid": sum(r["valid"] for r in mine),
        "valid_share": sum(r["valid"] for r in mine) / len(mine),
        "valid_somewhere": sum(r["valid_somewhere"] for r in mine),
        "finish_length": sum(r["finish_reason"] == "length" for r in mine),
        "median_decode_tok_s": statistics.median(speeds) if speeds else None,
        "median_completion_tokens": statistics.median(r["completion_tokens"] for r in mine),
    }


def mask_cost(agent, rows: list[dict]) -> dict:
    """The constraint's own time per token, replayed: each constrained answer's tokens (and the
    end token) go through a fresh logits processor, timed per call, with random logits. This is
    the cost the constraint adds to a decode step, apart from the model and the machine's load."""
    import torch

    from midori_hf_nb.structured import response_format_from
    from midori_hf_nb.structured.processor import GrammarLogitsProcessor, logits_width

    lm = agent.loaded_model
    width = logits_width(lm)
    eos = min(lm.eos_token_ids)
    models = {model.__name__: model for model in SCHEMAS}
    times = []
    for row in rows:
        if not row["constrained"]:
            continue
        processor = GrammarLogitsProcessor.for_model(response_format_from(models[row["schema"]]).constraint, lm, 1)
        tokens = lm.tokenizer.encode(row["text"], add_special_tokens=False) + [eos]
        sequence = torch.zeros((1, 1), dtype=torch.long)
        for token in tokens:
            scores = torch.randn(1, width)
            started = time.perf_counter()
            out = processor(sequence, scores)
            times.append(time.perf_counter() - started)
            if not torch.isfinite(out[0, token]):
                break  # the re-tokenized text differs from what was generated: stop this answer here
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    times.sort()
    return {"calls": len(times), "median_ms": statistics.median(times) * 1e3,
            "p90_ms": times[int(len(times) * 0.9)] * 1e3, "max_ms": times[-1] * 1e3}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="2 prompts, 24 new tokens: checks that it runs")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    pairs = prompts()
    max_new = args.max_new_tokens
    if args.smoke:
        pairs, max_new = pairs[:2], 24
    agent = HuggingFaceLocalAgent(DEFAULT_MODEL, do_sample=False, progress=False)
    await agent.load()
    for constrained in (False, True):  # warm-up: the first call of each mode is not timed
        await answer(agent, Person, "Bob is 12. Answer with JSON.", constrained, 8)
    load_before = os.getloadavg()
    rows = []
    for index, (model, message) in enumerate(pairs):
        order = (False, True) if index % 2 == 0 else (True, False)
        for constrained in order:
            row = await answer(agent, model, message, constrained, max_new)
            row["prompt"] = index
            rows.append(row)
            print(f"{index:2d} {model.__name__:8s} {'constrained' if constrained else 'free':11s} "
                  f"valid={row['valid']!s:5s} tok/s={row['decode_tokens_per_second'] or 0:6.1f} "
                  f"{row['text'][:70]!r}", flush=True)
    free, constrained = summary(rows, False), summary(rows, True)
    cost = mask_cost(agent, rows)
    step_ms = 1e3 / constrained["median_decode_tok_s"] if constrained["median_decode_tok_s"] else None
    cost["share_of_a_decode_step"] = cost["median_ms"] / step_ms if step_ms else None
    ratio = (constrained["median_decode_tok_s"] / free["median_decode_tok_s"]
             if free["median_decode_tok_s"] and constrained["median_decode_tok_s"] else None)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "model": str(DEFAULT_MODEL), "max_new_tokens": max_new, "greedy": True,
        "free": free, "constrained": constrained, "decode_tok_s_ratio_constrained_over_free": ratio,
        "constraint_time_per_token": cost,
        "rows": rows,
    }
    print()
    print(f"{'':12s} {'valid':>8s} {'valid somewhere':>16s} {'hit max_new_tokens':>19s} {'median decode tok/s':>20s}")
    for name, part in (("free", free), ("constrained", constrained)):
        print(f"{name:12s} {part['valid']:>3d}/{part['answers']:<4d} {part['valid_somewhere']:>11d}/{part['answers']:<4d}"
              f" {part['finish_length']:>19d} {part['median_decode_tok_s'] or 0:>20.1f}")
    if ratio is not None:
        print(f"decode tok/s, constrained / free: {ratio:.3f}")
    print(f"the constraint's own time per token (replayed, {cost['calls']} calls): median {cost['median_ms']:.3f} ms, "
          f"p90 {cost['p90_ms']:.3f} ms, max {cost['max_ms']:.1f} ms"
          + (f"; {cost['share_of_a_decode_step']:.1%} of a median constrained decode step" if step_ms else ""))
    out = args.output or ROOT / "benchmarks" / "results" / (
        f"structured-{time.strftime('%Y%m%d-%H%M%S')}{'-smoke' if args.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    await agent.unload_model()


if __name__ == "__main__":
    asyncio.run(main())
