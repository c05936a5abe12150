"""Batched versus one-by-one generation in compare(), side by side in one run.

Runs the same comparison (at least 8 prompts, greedy, on the offline default model) with the
default batch size and with ``batch_size=1``, alternating which goes first, for several rounds.
For each round it computes the aggregate tokens/s of each mode (completion tokens over the time
of the generate calls) and the ratio batched / one-by-one, then prints the median, min and max
ratio and writes everything to ``benchmarks/results/compare_batched-<time>.json``.

    python benchmarks/compare_batched.py            # 8 prompts, 64 new tokens, 3 rounds
    python benchmarks/compare_batched.py --smoke    # 8 prompts, 4 new tokens, 1 round, 1 thread
    python benchmarks/compare_batched.py --threads 1   # torch intra-op threads (default: torch's)

The model is loaded once before timing. The machine may be shared: only the ratios, measured
in the same run, mean anything. On a CPU shared with other busy processes, torch's default of
one intra-op thread per core can be several times slower than one thread (its threads wait for
each other at every operation), so the JSON records the thread count and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Give one tip for writing clear code.",
    "Explain in one sentence why the sky looks blue.",
    "Write a short poem about the sea.",
    "What is 12 times 12?",
    "Describe a cat to someone who has never seen one, in two sentences.",
    "List three things to pack for a day of hiking in the mountains in early spring.",
    "Why do leaves change colour in autumn?",
    "Suggest a name for a small bakery.",
    "What does a compiler do?",
    "Translate 'good morning' into Spanish and French.",
]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _config_has(name: str) -> bool:
    from midori_hf_nb import HuggingFaceConfig

    return name in HuggingFaceConfig.field_names()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="number of prompts (at least 8, at most %d)" % len(PROMPTS))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (batched, one by one), order alternating")
    parser.add_argument("--batch-size", type=int, default=None, help="batched mode's batch size (default: compare's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the agent's)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="torch_dtype of the agent (default: auto)")
    parser.add_argument("--smoke", action="store_true",
                        help="4 new tokens, 1 round, 1 thread unless --threads: checks that the script works")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if not 8 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be from 8 to {len(PROMPTS)}")
    if args.smoke:  # one thread keeps a smoke run quick on a busy shared machine
        args.max_new_tokens, args.rounds = 4, 1
        args.threads = args.threads or 1

    import torch

    from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, compare
    from midori_hf_nb.compare import summarize

    options = {"torch_dtype": args.dtype}
    if args.threads:
        torch.set_num_threads(args.threads)
        if _config_has("num_threads"):  # the engine would otherwise apply its own thread setting
            options["num_threads"] = args.threads
    prompts = PROMPTS[: args.prompts]
    settings = {"greedy": [True], "max_new_tokens": [args.max_new_tokens]}
    agent = HuggingFaceLocalAgent(DEFAULT_MODEL, progress=False, **options)
    started = time.perf_counter()
    agent.load_sync()
    load_seconds = time.perf_counter() - started
    compare(prompts[:2], settings={"greedy": [True], "max_new_tokens": [2]}, models=agent, progress=False)  # warm-up

    def measure(mode: str) -> dict:
        size = 1 if mode == "one_by_one" else args.batch_size
        wall_start = time.perf_counter()
        df = compare(prompts, settings=settings, models=agent, batch_size=size, progress=False)
        wall = time.perf_counter() - wall_start
        line = summarize(df).iloc[0]
        return {
            "mode": mode,
            "batch_size": int(df["batch_size"].max()),
            "batches": int(line["batches"]),
            "completion_tokens": int(line["completion_tokens"]),
            "generate_seconds": float(line["seconds"]),
            "wall_seconds": wall,
            "tokens_per_second": float(line["tokens_per_second"]),
            "wall_tokens_per_second": int(line["completion_tokens"]) / wall,
            "responses": df["response"].tolist(),
        }

    dtype_used = agent.loaded_model.spec.dtype
    threads_used = torch.get_num_threads()  # after the warm-up, so the engine's own setting is applied
    print(f"{DEFAULT_MODEL}: {dtype_used}, {threads_used} torch thread(s), {len(prompts)} prompts, "
          f"{args.max_new_tokens} new tokens", flush=True)
    runs, ratios, wall_ratios, same_outputs = [], [], [], []
    load_before = load_average()
    for round_index in range(args.rounds):
        order = ["batched", "one_by_one"] if round_index % 2 == 0 else ["one_by_one", "batched"]
        results = {}
        for mode in order:
            results[mode] = measure(mode)
            results[mode]["round"] = round_index
            runs.append(results[mode])
            r = results[mode]
            print(f"round {round_index} {mode:>10}: batch {r['batch_size']:>2}, {r['completion_tokens']} tokens in "
                  f"{r['generate_seconds']:.1f} s -> {r['tokens_per_second']:.1f} tok/s", flush=True)
        ratios.append(results["batched"]["tokens_per_second"] / results["one_by_one"]["tokens_per_second"])
        wall_ratios.append(results["batched"]["wall_tokens_per_second"] / results["one_by_one"]["wall_tokens_per_second"])
        same = sum(a == b for a, b in zip(results["batched"]["responses"], results["one_by_one"]["responses"]))
        same_outputs.append(same)
        print(f"round {round_index} ratio batched / one by one: {ratios[-1]:.2f}x "
              f"(identical greedy outputs: {same}/{len(prompts)})", flush=True)
    agent.unload_model_sync()

    summary = {
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "wall_ratio_median": statistics.median(wall_ratios),
        "identical_outputs": same_outputs,
    }
    print(f"\naggregate tokens/s, batched / one by one, {args.rounds} round(s), {len(prompts)} prompts, "
          f"{args.max_new_tokens} new tokens: median {summary['ratio_median']:.2f}x "
          f"(min {summary['ratio_min']:.2f}x, max {summary['ratio_max']:.2f}x); "
          f"wall-clock median {summary['wall_ratio_median']:.2f}x")

    record = {
        "benchmark": "compare_batched",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "model": DEFAULT_MODEL,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "torch_threads": threads_used,
        "dtype": dtype_used,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "model_load_seconds": load_seconds,
        "summary": summary,
        "ratios": ratios,
        "runs": runs,
    }
    out = args.out
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = ROOT / "benchmarks" / "results" / f"compare_batched-{'smoke-' if args.smoke else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
