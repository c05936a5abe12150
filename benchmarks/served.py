"""The same question through the local agent and through a served agent on this machine, side by side.

Starts ``transformers serve`` on the offline default model (127.0.0.1, a free port, its directory's
float32 weights), then answers one question greedily, in turns, through:

* ``local``: ``HuggingFaceLocalAgent(model=DEFAULT_MODEL)`` with its defaults (bfloat16 on AVX2 CPUs);
* ``local-fp32``: the same with ``torch_dtype="float32"`` (the server's weights and numerics);
* ``served``: ``OpenAICompatibleAgent`` on the server (HTTP, server-sent events, the server's own
  generation loop).

Each agent is warmed up first; each round runs every agent once, the first one rotating. Figures are
the agents' own statistics: time to first token from the call (``call_to_first_token``), decode
tokens/s (after the first token) and overall tokens/s. Medians over the rounds, and ratios to
``local``, are printed and written to ``benchmarks/results/served-<time>.json``. The machine is shared:
only ratios from one run mean anything.

    .venv/bin/python benchmarks/served.py                  # 3 rounds, 64 new tokens
    .venv/bin/python benchmarks/served.py --smoke          # 1 round, 8 tokens: the paths still run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, OpenAICompatibleAgent, make_payload  # noqa: E402
from midori_hf_nb.stats import stats_of  # noqa: E402

SYSTEM = "You are a helpful assistant."
QUESTION = ("Write a detailed essay about the history of the steam engine, its inventors and its impact on "
            "industry.")


def load_average() -> list[float]:
    return list(os.getloadavg())


async def measure(agents: dict, rounds: int, max_new_tokens: int) -> dict[str, list[dict]]:
    payload = make_payload(QUESTION, SYSTEM)
    for agent in agents.values():  # warm-up: loaded, compiled paths taken, connection open
        await agent.invoke(payload, max_new_tokens=4)
    samples: dict[str, list[dict]] = {name: [] for name in agents}
    names = list(agents)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            response = await agents[name].invoke(payload, max_new_tokens=max_new_tokens)
            s = stats_of(response)
            samples[name].append({
                "round": index, "ttft_s": s.call_to_first_token, "decode_tok_s": s.decode_tokens_per_second,
                "tok_s": s.tokens_per_second, "tokens": s.completion_tokens, "wall_s": s.wall_seconds,
                "finish_reason": s.finish_reason, "dtype": s.dtype, "device": s.device,
                "text": response.response,
            })
            print(f"round {index} {name:<11} ttft {s.call_to_first_token:6.3f} s  decode "
                  f"{(s.decode_tokens_per_second or 0):6.2f} tok/s  overall {(s.tokens_per_second or 0):6.2f} tok/s  "
                  f"{s.completion_tokens} tokens", flush=True)
    return samples


def summarise(samples: dict[str, list[dict]]) -> dict[str, dict]:
    def median(name: str, key: str) -> float | None:
        values = [x[key] for x in samples[name] if x[key] is not None]
        return statistics.median(values) if values else None

    summary = {name: {key: median(name, key) for key in ("ttft_s", "decode_tok_s", "tok_s")} for name in samples}
    base = summary["local"]
    for name, row in summary.items():
        row["ttft_ratio"] = row["ttft_s"] / base["ttft_s"] if row["ttft_s"] and base["ttft_s"] else None
        row["decode_ratio"] = (row["decode_tok_s"] / base["decode_tok_s"]
                               if row["decode_tok_s"] and base["decode_tok_s"] else None)
        row["tok_s_ratio"] = row["tok_s"] / base["tok_s"] if row["tok_s"] and base["tok_s"] else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="1 round of 8 tokens (the paths still run)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.max_new_tokens = 1, 8

    from midori_hf_nb import engine
    from midori_hf_nb.served.local_server import TransformersServer
    from midori_hf_nb.sources import default_model_path

    model_dir = engine.convert_gguf(default_model_path(), progress=False)
    started = time.perf_counter()
    server = TransformersServer(model_dir).start()
    server_start_s = time.perf_counter() - started
    print(f"server up in {server_start_s:.1f} s: {server}", flush=True)
    load_before = load_average()
    try:
        agents = {
            "local": HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, progress=False),
            "local-fp32": HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, torch_dtype="float32",
                                                progress=False),
            "served": OpenAICompatibleAgent(model=server.model, base_url=server.base_url, do_sample=False),
        }
        samples = asyncio.run(measure(agents, args.rounds, args.max_new_tokens))
    finally:
        server.stop()
    summary = summarise(samples)
    print(f"\nmedians over {args.rounds} round(s), {args.max_new_tokens} new tokens, greedy; ratios to `local`")
    print(f"{'row':<11} {'TTFT s':>8} {'x':>6} {'decode tok/s':>13} {'x':>6} {'tok/s':>7} {'x':>6}")
    for name, row in summary.items():
        def f(value, fmt):
            return format(value, fmt) if value is not None else "-"
        print(f"{name:<11} {f(row['ttft_s'], '8.3f')} {f(row['ttft_ratio'], '6.2f')} "
              f"{f(row['decode_tok_s'], '13.2f')} {f(row['decode_ratio'], '6.2f')} {f(row['tok_s'], '7.2f')} "
              f"{f(row['tok_s_ratio'], '6.2f')}")
    same = samples["served"][-1]["text"] == samples["local-fp32"][-1]["text"]
    print(f"served answer == local float32 answer: {same}")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "rounds": args.rounds,
              "max_new_tokens": args.max_new_tokens, "question": QUESTION, "system": SYSTEM,
              "server_start_s": server_start_s, "load_average_before": load_before,
              "load_average_after": load_average(), "cpu_count": os.cpu_count(), "summary": summary,
              "samples": samples, "served_equals_local_fp32": same}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or ROOT / "benchmarks" / "results" / f"served-{stamp}{'-smoke' if args.smoke else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"written to {output}")


if __name__ == "__main__":
    main()
