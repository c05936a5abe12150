"""What token probabilities cost a generation: decode tokens/s with ``top_logprobs=5`` (and with
``logprobs=True`` alone) against the same call without them, side by side in one run.

One loaded offline default model on the default path (its default dtype, the engine's own decode
loop), greedy, the same long question every time. Each round runs the three configurations once, the
order rotating from round to round, so all of them see the same machine. The figure is the
``decode_tokens_per_second`` statistic (tokens after the first over the time after the first), and
the answers are checked to be the same in every configuration (recording must not change them).
A second measurement times the recorder alone: one
:meth:`~midori_hf_nb.engine.logprobs.Recorder.step` on the model's vocabulary (what it adds per token), against the mean time of one decode step.

Without token probabilities a generation makes no recorder: the decode loops test ``recorder is
None`` once per token, which is the whole cost of the feature when it is off.

The machine may be shared with other work: only the ratios of one run mean anything. Results are
printed and written to ``benchmarks/results/logprobs-<time>.json`` with the load average.

    .venv/bin/python benchmarks/logprobs.py                 # 128 new tokens, 8 rounds (about 6 min)
    .venv/bin/python benchmarks/logprobs.py --smoke         # a few tokens, 1 round: the paths still run
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

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload  # noqa: E402
from midori_hf_nb.stats import stats_of  # noqa: E402

QUESTION = "Write a detailed essay about the history of the steam engine, its inventors and its impact on industry."
SYSTEM = "You are a helpful assistant."
CONFIGS = {"off": {}, "logprobs": {"logprobs": True}, "top_logprobs=5": {"top_logprobs": 5}}


async def rounds(agent: HuggingFaceLocalAgent, count: int, tokens: int) -> dict:
    payload = make_payload(QUESTION, SYSTEM)
    names = list(CONFIGS)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    answers: set[str] = set()
    for index in range(count):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            response = await agent.invoke(payload, greedy=True, max_new_tokens=tokens, stop_on_repetition=False,
                                          **CONFIGS[name])
            speeds[name].append(stats_of(response).decode_tokens_per_second or 0.0)
            answers.add(response.response)
    same = len(answers) == 1
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    return {"rounds": count, "new_tokens": tokens, "decode_tokens_per_second": speeds, "median": medians,
            "ratio_to_off": {name: medians[name] / medians["off"] for name in names},
            "same_answer_in_every_configuration": same}


def recorder_alone(agent: HuggingFaceLocalAgent, steps: int) -> dict:
    import torch

    from midori_hf_nb.engine.logprobs import Recorder
    from midori_hf_nb.logprobs import ProbabilityRequest

    lm = agent.loaded_model
    width = lm.model.get_output_embeddings().weight.shape[0]
    logits = torch.randn(1, width)
    token = torch.tensor([int(logits.argmax())])
    out = {}
    for top in (0, 5):
        recorder = Recorder(ProbabilityRequest(tokens=True, top=top), lm)
        recorder.step(logits, logits, token)  # the token texts are cached from then on, as in a long answer
        started = time.perf_counter()
        for _ in range(steps):
            recorder.step(logits, logits, token)
        out[f"top={top}"] = (time.perf_counter() - started) / steps * 1e6
    return {"unit": "microseconds per token (one step, the logits also being the scores)", "steps": steps, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="a few tokens, one round: the paths still run")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.tokens = 1, 8
    load_before = os.getloadavg()
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False, kv_reuse=False, log=False)
    agent.load_sync()
    asyncio.run(agent.invoke(make_payload("Hi"), max_new_tokens=4))  # warm-up: kernels, threads, first call
    decode = asyncio.run(rounds(agent, args.rounds, args.tokens))
    alone = recorder_alone(agent, 20 if args.smoke else 500)
    step_ms = 1000 / decode["median"]["off"] if decode["median"]["off"] else None
    result = {"model": DEFAULT_MODEL, "dtype": agent.loaded_model.spec.dtype, "decode": decode, "recorder": alone,
              "decode_step_ms": step_ms, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "smoke": args.smoke}
    for name, ratio in decode["ratio_to_off"].items():
        print(f"{name:>15}: median {decode['median'][name]:6.2f} decode tok/s  ({ratio:.3f} x off)")
    print(f"the same answer in every configuration: {decode['same_answer_in_every_configuration']}")
    print(f"recorder alone: {alone['top=0']:.0f} us (logprobs), {alone['top=5']:.0f} us (top 5) per token; "
          f"one decode step {step_ms:.1f} ms" if step_ms else "")
    print(f"load average before {load_before}, after {result['load_average_after']}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    name = f"logprobs-{time.strftime('%Y%m%d-%H%M%S')}{'-smoke' if args.smoke else ''}.json"
    (results / name).write_text(json.dumps(result, indent=2))
    print(f"written to benchmarks/results/{name}")
    asyncio.run(agent.unload_model())


if __name__ == "__main__":
    main()
