"""Command line: stream an answer from a local model to the terminal.

    python -m midori_hf_nb "What is the capital of France?"
    python -m midori_hf_nb --greedy --max-new-tokens 64 "Name three primes."
    python -m midori_hf_nb --prepare        # convert and cache the offline default model
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Sequence

from .config import DEVICES, DTYPES
from .log.context import context as log_context


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m midori_hf_nb",
        description="Stream an answer from a local Hugging Face model (offline default: SmolLM2-135M-Instruct).",
    )
    parser.add_argument("question", nargs="*", help="the question to ask (read from stdin when omitted)")
    parser.add_argument("--model", "-m", default=None,
                        help="hub id, local model directory or .gguf file (default: the offline default model)")
    parser.add_argument("--system", "-s", default="You are a helpful assistant.", help="system prompt")
    parser.add_argument("--max-new-tokens", "-n", type=int, default=256, help="maximum tokens to generate (default 256)")
    parser.add_argument("--temperature", "-t", type=float, default=None,
                        help="sample at this temperature, 0.0-2.0 (0: greedy); without it: the model's own "
                             "choice, else greedy")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (deterministic), also for a model whose "
                        "generation_config.json samples")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="device (default auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default auto)")
    parser.add_argument("--show-thinking", action="store_true", help="also print reasoning, dimmed")
    parser.add_argument("--stats", action="store_true", help="print tokens, seconds and tokens/s at the end")
    parser.add_argument("--prepare", action="store_true",
                        help="convert and cache the model (the offline default when --model is not given), then exit")
    return parser


async def _run(args: argparse.Namespace, question: str) -> int:
    from .agent import HuggingFaceLocalAgent
    from .protocol import make_payload
    from .sources import DEFAULT_MODEL

    agent = HuggingFaceLocalAgent(
        model=args.model or DEFAULT_MODEL,
        device=args.device,
        torch_dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        # --greedy decodes greedily, a --temperature samples; neither: the model's own choice, else greedy
        do_sample=False if args.greedy else (True if args.temperature is not None else None),
    )
    started = time.perf_counter()
    await agent.load()
    if args.prepare:
        lm = agent.loaded_model
        print(f"ready: {agent.config.model} -> {lm.path} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        return 0
    payload = make_payload(question, args.system, session_id="cli")
    with log_context(surface="cli"):  # the call log records where the call came from
        stream = agent.stream(payload, events=True, seed=args.seed)
    dim, reset = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
    response = None
    async for event in stream:
        if event.kind == "text":
            print(event.text, end="", flush=True)
        elif event.kind == "thinking" and args.show_thinking:
            print(f"{dim}{event.text}{reset}", end="", flush=True)
        elif event.kind == "done":
            response = event.data
    print()
    if args.stats and response is not None:
        meta = response.metadata or {}
        print(
            f"[{meta['completion_tokens']} tokens in {meta['total_seconds']:.2f} s, "
            f"{meta['tokens_per_second']:.1f} tok/s, first token {meta['time_to_first_token'] or 0:.2f} s, "
            f"finish: {meta['finish_reason']}, decode: {meta.get('decode_path')}"
            + (f" ({meta['decode_path_reason']})" if meta.get("decode_path_reason") else "") + "]",
            file=sys.stderr,
        )
    await agent.unload_model()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m midori_hf_nb`` and the ``midori-hf-nb`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    question = " ".join(args.question).strip()
    if not question and not args.prepare:
        if sys.stdin.isatty():
            parser.error("give a question, e.g. python -m midori_hf_nb \"What is the capital of France?\"")
        question = sys.stdin.read().strip()
    try:
        return asyncio.run(_run(args, question))
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
