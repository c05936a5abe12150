"""What the call log costs a call: logged against ``log=False``, side by side in one run.

Three measurements, each alternating logged and unlogged calls in blocks (the order of the two
swapping every block), so both see the same machine:

* ``overhead``: calls of a scripted agent (no model: the call itself is a fraction of a millisecond,
  so the log's share shows). Per-call wall time, logged and not; the median difference is the
  log's cost per call (the writer thread runs meanwhile, as it does in use).
* ``short``: the offline default model answering with 1 new token (a prompt's prefill and one
  step): per-call wall time, logged and not.
* ``decode``: the offline default model answering with ``--tokens`` new tokens, greedy: decode
  tokens/s (after the first token), logged and not.
* ``caller``: the time :func:`~midori_hf_nb.log.capture.start_call` and
  :func:`~midori_hf_nb.log.capture.finish_call` take on the calling thread (the rest of the work is
  on the writer thread).

The log goes to a temporary folder (never the user's log). Results are printed and written to
``benchmarks/results/call_log-<time>.json`` with the load average before and after. The machine may
be shared with other work: only ratios and differences from one run mean anything.

    .venv/bin/python benchmarks/call_log.py            # 2000 scripted calls, 60 short, 8 decode rounds
    .venv/bin/python benchmarks/call_log.py --smoke    # a few of each: the paths still run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LOG_DIR = Path(tempfile.mkdtemp(prefix="midori-bench-log-"))
os.environ["MIDORI_HF_NB_LOG"] = str(LOG_DIR / "logs.db")

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, log, make_payload  # noqa: E402
from midori_hf_nb.log.capture import finish_call, start_call  # noqa: E402
from midori_hf_nb.stats import stats_of  # noqa: E402
from midori_hf_nb.testing import ScriptedAgent  # noqa: E402

QUESTION = "Write a detailed essay about the history of the steam engine, its inventors and its impact on industry."
SYSTEM = "You are a helpful assistant."


async def alternate(call, total: int, block: int) -> dict[str, list[float]]:
    """``call(logged)`` ``total`` times each way, in blocks of ``block``, the order swapping each block."""
    samples: dict[str, list[float]] = {"logged": [], "unlogged": []}
    index = 0
    while len(samples["logged"]) < total:
        order = ("logged", "unlogged") if index % 2 == 0 else ("unlogged", "logged")
        for name in order:
            for _ in range(min(block, total - len(samples[name]))):
                samples[name].append(await call(name == "logged"))
        index += 1
    return samples


def summary(samples: dict[str, list[float]], unit: str) -> dict:
    logged, unlogged = statistics.median(samples["logged"]), statistics.median(samples["unlogged"])
    return {"unit": unit, "calls_each": len(samples["logged"]), "median_logged": logged, "median_unlogged": unlogged,
            "median_difference": logged - unlogged, "ratio": logged / unlogged if unlogged else None,
            "p90_logged": statistics.quantiles(samples["logged"], n=10)[-1] if len(samples["logged"]) > 1 else logged,
            "p90_unlogged": statistics.quantiles(samples["unlogged"], n=10)[-1]
            if len(samples["unlogged"]) > 1 else unlogged}


async def overhead(calls: int) -> dict:
    agent = ScriptedAgent("A short scripted answer of a few pieces.", piece_chars=8)
    payload = make_payload("What does the log cost?", SYSTEM)

    async def call(logged: bool) -> float:
        started = time.perf_counter()
        await agent.invoke(payload, log=None if logged else False)
        return (time.perf_counter() - started) * 1000

    for _ in range(50):
        await call(True)
        await call(False)
    return summary(await alternate(call, calls, 50), "ms per call")


async def short_calls(agent: HuggingFaceLocalAgent, calls: int) -> dict:
    payload = make_payload(QUESTION, SYSTEM)

    async def call(logged: bool) -> float:
        started = time.perf_counter()
        await agent.invoke(payload, max_new_tokens=1, log=None if logged else False)
        return (time.perf_counter() - started) * 1000

    return summary(await alternate(call, calls, 5), "ms per call (1 new token)")


async def decode(agent: HuggingFaceLocalAgent, rounds: int, tokens: int) -> dict:
    payload = make_payload(QUESTION, SYSTEM)

    async def call(logged: bool) -> float:
        response = await agent.invoke(payload, max_new_tokens=tokens, log=None if logged else False)
        return stats_of(response).decode_tokens_per_second or 0.0

    result = summary(await alternate(call, rounds, 1), f"decode tokens/s ({tokens} new tokens)")
    return result


async def caller_side(calls: int) -> dict:
    payload = make_payload("caller side", SYSTEM)
    response = await ScriptedAgent("x").invoke(payload, log=False)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        ticket = start_call(None, None, method="bench", payload=payload)
        finish_call(ticket, response)
        times.append((time.perf_counter() - started) * 1e6)
    log.flush(60)
    return {"unit": "microseconds on the calling thread per call", "calls": calls,
            "median": statistics.median(times), "p90": statistics.quantiles(times, n=10)[-1]}


async def main_async(args: argparse.Namespace) -> dict:
    results = {"overhead": await overhead(args.calls)}
    print("overhead", json.dumps(results["overhead"], indent=1), flush=True)
    results["caller"] = await caller_side(args.calls)
    print("caller", json.dumps(results["caller"], indent=1), flush=True)
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, progress=False)
    await agent.load()
    await agent.invoke(make_payload(QUESTION, SYSTEM), max_new_tokens=4, log=False)  # warm-up
    results["short"] = await short_calls(agent, args.short)
    print("short", json.dumps(results["short"], indent=1), flush=True)
    results["decode"] = await decode(agent, args.rounds, args.tokens)
    print("decode", json.dumps(results["decode"], indent=1), flush=True)
    await agent.unload_model()
    log.flush(60)
    results["rows_written"] = log.info()["responses"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="scripted calls each way")
    parser.add_argument("--short", type=int, default=60, help="1-token calls of the default model each way")
    parser.add_argument("--rounds", type=int, default=8, help="decode calls each way")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens of a decode call")
    parser.add_argument("--smoke", action="store_true", help="a few calls of each kind")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/)")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.short, args.rounds, args.tokens = 60, 4, 2, 8
    before = list(os.getloadavg())
    started = time.time()
    results = asyncio.run(main_async(args))
    results.update(load_average_before=before, load_average_after=list(os.getloadavg()), cpus=os.cpu_count(),
                   seconds=time.time() - started, smoke=args.smoke, settings=vars(args) | {"output": None})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or ROOT / "benchmarks" / "results" / f"call_log-{stamp}{'-smoke' if args.smoke else ''}.json"
    output.write_text(json.dumps(results, indent=2))
    o, d = results["overhead"], results["decode"]
    print(f"\nlog cost per scripted call: median {o['median_difference']:+.3f} ms ({o['ratio']:.3f}x); "
          f"caller thread {results['caller']['median']:.1f} us; decode tokens/s logged/unlogged "
          f"{d['ratio']:.3f}; load average {before} -> {results['load_average_after']}\nwritten to {output}")


if __name__ == "__main__":
    main()
