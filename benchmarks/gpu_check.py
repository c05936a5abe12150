"""A prepared check of the GPU path, for a CUDA machine with no network (about 3-6 minutes).

    python benchmarks/gpu_check.py                 # on a CUDA machine: every check below
    python benchmarks/gpu_check.py --dry-run       # the same checks on CPU with a tiny model (about 1 min)
    python benchmarks/gpu_check.py --out FILE.json # where the JSON report goes

Nothing is downloaded. The models are built from real configurations with random weights
(the values are written below: TinyLlama-1.1B, and a Llama-2-7B-shaped model trimmed to a few
layers) and saved with the offline default model's tokenizer (its vocabulary size replaces the
configuration's, so the tokenizer fits); random weights make the answers meaningless but the
work per token is that of the real model. For each model it checks:

* ``device="auto"`` picks CUDA (on ``--dry-run``: the CPU, as there is no GPU);
* loading in bfloat16 and float16 (``--dry-run``: bfloat16 and float32) gives weights of that dtype;
* ``invoke``, ``stream`` (the streamed pieces join to the invoked answer, greedy) and cancelling
  a stream (it ends with ``finish_reason="cancelled"`` within a few tokens);
* a batched ``compare()`` (4 prompts in one batch, every row ok);
* decode tokens/s of the agent against ``transformers.pipeline`` on the same weights, dtype and
  device, in the same run, rounds alternating, reported as a ratio.

The report (every check with ok/failed and the figures) is printed and written as JSON; the exit
status is 1 when a check failed or the run took longer than ``--budget`` seconds (default 480).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json (vocab_size replaced by the tokenizer's).
TINYLLAMA_1_1B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "hidden_act": "silu",
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "vocab_size": 32000,
}
#: meta-llama/Llama-2-7b-hf config.json, trimmed to 4 of its 32 layers (vocab_size replaced).
LLAMA_7B_SHAPED = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "vocab_size": 32000,
}
#: The model of --dry-run: the same architecture, tiny.
TINY = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False, "vocab_size": 32000,
}

PROMPTS = ["What is the capital of France?", "Name three colours.", "Write a short poem about the sea.",
           "What does a compiler do?"]
SYSTEM = "You are a helpful assistant."


def build_model(config_values: dict[str, Any], tokenizer_dir: Path, folder: Path, dtype: str) -> Path:
    """Save a random-weight Llama with ``config_values`` and the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    values = {k: v for k, v in config_values.items() if k != "architectures"}
    values["vocab_size"] = len(tokenizer)
    config = LlamaConfig(**values, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


class Report:
    """Checks and figures, printed as they come."""

    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}

    def check(self, name: str, ok: bool, detail: Any = None) -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  [{'ok' if ok else 'FAILED'}] {name}" + (f": {detail}" if detail is not None else ""), flush=True)
        return ok

    def run(self, name: str, body: Any) -> Any:
        """Run ``body()``; an exception is a failed check named ``name``."""
        try:
            return body()
        except Exception as exc:  # noqa: BLE001 - reported as a failed check, the run goes on
            self.check(name, False, f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
            return None


def check_agent(report: Report, label: str, folder: Path, dtype: str, expect_device: str, new_tokens: int,
                rounds: int) -> None:
    """The checks of one model in one dtype."""
    import torch

    from midori_hf_nb import HuggingFaceLocalAgent, make_payload
    from midori_hf_nb.compare import compare
    from midori_hf_nb.stats import stats_of

    loop = asyncio.new_event_loop()
    agent = HuggingFaceLocalAgent(str(folder), device="auto", torch_dtype=dtype, do_sample=False,
                                  max_new_tokens=new_tokens, progress=False)
    started = time.perf_counter()
    loop.run_until_complete(agent.load())
    lm = agent.loaded_model
    report.figures[f"{label} load seconds"] = time.perf_counter() - started
    report.check(f"{label}: device='auto' picks {expect_device}", lm.spec.device.startswith(expect_device),
                 lm.spec.device)
    weight_dtype = str(next(lm.model.parameters()).dtype).replace("torch.", "")
    report.check(f"{label}: weights are {dtype}", weight_dtype == dtype, weight_dtype)
    payload = make_payload(PROMPTS[0], SYSTEM)

    def invoke_and_stream() -> None:
        response = loop.run_until_complete(agent.invoke(payload, max_new_tokens=16))
        stats = stats_of(response)
        report.check(f"{label}: invoke", stats.completion_tokens and stats.completion_tokens > 0,
                     f"{stats.completion_tokens} tokens, decode path {stats.decode_path}")

        async def streamed() -> str:
            return "".join([piece async for piece in agent.stream(payload, max_new_tokens=16)])

        text = loop.run_until_complete(streamed())
        report.check(f"{label}: stream joins to the invoked answer", text == response.response)

        async def cancelled() -> Any:
            stream = agent.stream(payload, events=True, max_new_tokens=new_tokens * 4)
            async for event in stream:
                if event.kind == "text":
                    stream.cancel()
            return stream.response

        final = loop.run_until_complete(cancelled())
        finish = stats_of(final).finish_reason if final is not None else None
        tokens = stats_of(final).completion_tokens if final is not None else None
        report.check(f"{label}: cancel stops the stream", finish == "cancelled" and tokens < new_tokens * 4,
                     f"finish_reason={finish}, {tokens} tokens")

    report.run(f"{label}: invoke/stream/cancel", invoke_and_stream)

    def batched() -> None:
        frame = compare(PROMPTS, systems=[SYSTEM], models=agent, batch_size=len(PROMPTS), seed=None,
                        settings={"max_new_tokens": [16]}, progress=False)
        ok = int((frame["status"] == "ok").sum())
        report.check(f"{label}: batched compare", ok == len(PROMPTS) and int(frame["batch_size"].max()) == len(PROMPTS),
                     f"{ok}/{len(PROMPTS)} rows ok, batch size {int(frame['batch_size'].max())}")

    report.run(f"{label}: batched compare", batched)

    def decode_speed() -> None:
        import transformers

        pipe = transformers.pipeline("text-generation", model=str(folder), dtype=getattr(torch, dtype),
                                     device=lm.input_device)
        prompt = pipe.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": PROMPTS[0]}],
                                                    tokenize=False, add_generation_prompt=True)

        class Stamps:
            def __init__(self) -> None:
                self.times: list[float] = []
                self.seen_prompt = False

            def put(self, value: Any) -> None:
                if self.seen_prompt:
                    self.times.append(time.perf_counter())
                self.seen_prompt = True

            def end(self) -> None:
                pass

        def pipeline_tps() -> float | None:
            stamps = Stamps()
            pipe(prompt, max_new_tokens=new_tokens, do_sample=False, return_full_text=False, streamer=stamps)
            t = stamps.times
            return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None

        def agent_tps() -> float | None:
            response = loop.run_until_complete(agent.invoke(payload, max_new_tokens=new_tokens))
            return stats_of(response).decode_tokens_per_second

        pipeline_tps(), agent_tps()  # warm-up
        samples: dict[str, list[float]] = {"agent": [], "pipeline": []}
        for r in range(rounds):
            order = [("agent", agent_tps), ("pipeline", pipeline_tps)]
            for name, measure in (order if r % 2 == 0 else order[::-1]):
                value = measure()
                if value:
                    samples[name].append(value)
        medians = {k: statistics.median(v) for k, v in samples.items() if v}
        ratio = medians["agent"] / medians["pipeline"] if len(medians) == 2 else None
        report.figures[f"{label} decode tok/s"] = {**{k: round(v, 1) for k, v in medians.items()},
                                                   "ratio": None if ratio is None else round(ratio, 2),
                                                   "samples": samples}
        report.check(f"{label}: decode tok/s agent vs pipeline measured", ratio is not None,
                     None if ratio is None else f"agent {medians['agent']:.1f}, pipeline {medians['pipeline']:.1f} "
                                                f"-> {ratio:.2f}x")
        del pipe

    report.run(f"{label}: decode speed", decode_speed)
    agent.unload_model_sync()
    loop.close()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same checks on CPU with a tiny model")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a folder with a tokenizer (default: the offline default model's conversion)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per timed answer (default 128; 16 dry)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per row (default 3; 1 dry)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds the whole run may take")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    report = Report()
    if args.dry_run:
        models = [("tiny", TINY)]
        dtypes = ["bfloat16", "float32"]
        expect_device = "cpu"
        new_tokens, rounds = args.new_tokens or 16, args.rounds or 1
    else:
        if not report.check("CUDA is available", torch.cuda.is_available(), torch.__version__):
            return _finish(report, args, started, 1)
        models = [("tinyllama-1.1b", TINYLLAMA_1_1B), ("llama-7b-shaped-4-layers", LLAMA_7B_SHAPED)]
        dtypes = ["bfloat16", "float16"]
        expect_device = "cuda"
        new_tokens, rounds = args.new_tokens or 128, args.rounds or 3
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        from midori_hf_nb import engine
        from midori_hf_nb.sources import default_model_path

        tokenizer_dir = engine.convert_gguf(default_model_path(), progress=False)
    print(f"gpu_check: {'dry run on CPU' if args.dry_run else 'CUDA'}; torch {torch.__version__}; "
          f"{new_tokens} new tokens, {rounds} round(s)", flush=True)
    if torch.cuda.is_available():
        report.figures["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="midori-gpu-check-") as tmp:
        for name, values in models:
            folder = Path(tmp) / name
            built = report.run(f"{name}: build", lambda: build_model(values, tokenizer_dir, folder, dtypes[0]))
            if built is None:
                continue
            for dtype in dtypes:  # saved once, loaded in each dtype
                print(f"{name} ({dtype}):", flush=True)
                report.run(f"{name} {dtype}", lambda: check_agent(report, f"{name} {dtype}", folder, dtype,
                                                                   expect_device, new_tokens, rounds))
                if time.perf_counter() - started > args.budget:
                    report.check("within the time budget", False, f"stopped after {name} {dtype}")
                    return _finish(report, args, started, 1)
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    report.check(f"finished within {args.budget:.0f} s", seconds <= args.budget, f"{seconds:.0f} s")
    return _finish(report, args, started, 0 if all(c["ok"] for c in report.checks) else 1)


def _finish(report: Report, args: argparse.Namespace, started: float, code: int) -> int:
    import torch

    record = {"dry_run": args.dry_run, "seconds": time.perf_counter() - started, "torch": torch.__version__,
              "platform": platform.platform(), "checks": report.checks, "figures": report.figures,
              "failed": [c["check"] for c in report.checks if not c["ok"]]}
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_check-{'dry-' if args.dry_run else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"{len(report.checks) - len(record['failed'])}/{len(report.checks)} checks ok in {record['seconds']:.0f} s; "
          f"written: {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
