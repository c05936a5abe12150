"""Speed and memory of the agent's default path against the plain-pipeline baseline, in one run.

    python benchmarks/bench.py            # 128 new tokens, 3 rounds, every figure (about 10-25 min)
    python benchmarks/bench.py --smoke    # 4 new tokens, 1 round, one process, no warm-up, no GGUF
                                          # cold start: checks that everything runs (about 30 s)

Every configuration runs in its own worker process (so its peak resident memory is its own)
with its model loaded once and warmed up; the workers take turns, one at a time, round after
round, the starting configuration rotating each round, so every row sees the same machine.
Figures (see benchmarks/README.md for what each one means):

* decode tokens/s, time to first token and total latency of the same prompt, greedy, for the
  agent's default path, the plain ``transformers.pipeline("text-generation")`` baseline (fp32,
  ``System:/User:/Assistant:`` string prompt, torch's default threads) and reference rows;
* peak resident memory of each worker (``VmHWM``), against the weights' bytes;
* cold start: a new process, from interpreter start to the first streamed token, loading the
  converted cache versus loading the GGUF file into an empty cache (conversion included);
* streaming into a cell: decode tokens/s of the agent streamed through the notebook helper
  (``stream_to_cell`` with an IPython display handle, no kernel attached) versus raw generation;
* the comparison grid: ``compare()`` over 8 prompts batched versus one by one (aggregate tokens/s);
* a 10-turn conversation: time to first token of turn 1 and turn 10, with the conversation's KV
  cache kept between turns (``kv_reuse=True``, the default) and without;
* 8 concurrent ``invoke`` calls versus the same 8 in a row (aggregate tokens/s);
* reproducible mode (``reproducible=True``) against the default mode, side by side: decode
  tokens/s of one answer (row ``agent-reproducible``), the grid batched and one by one, 8
  concurrent and 8 sequential invokes, and the 10-turn conversation with the kept KV cache.

It prints a table of medians, minima and maxima with ratios to the baseline and writes
``benchmarks/results/bench-<time>.json``. The machine may be shared: only ratios measured in the
same run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compare_batched import PROMPTS  # this folder is on sys.path when the script runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SYSTEM = "You are a helpful assistant."
USER = "Write a detailed essay about the history of the steam engine, its inventors and its impact on industry."
#: The comparison grid's prompts: the first eight of compare_batched.py's (this folder).
GRID_PROMPTS = PROMPTS[:8]
#: The user turns of the conversation rows (each turn carries the previous ones as memory).
TURNS = ["What is the capital of France?", "And of Italy?", "Name a famous dish from there.", "How is it made?",
         "What wine goes with it?", "Tell me a fun fact about Rome.", "What is the Colosseum?", "Who built it?",
         "How many people did it hold?", "Summarise our conversation in two sentences."]
#: New tokens per answer in the conversation and concurrency rows (--turn-tokens).
TURN_TOKENS = 32
#: The rows besides the decode rows (--extras): each runs in its own worker.
EXTRA_ROWS = ("stream", "grid", "turns", "concurrent")

#: name -> (kind, options, description). The first row is the baseline of every ratio.
ROWS: dict[str, tuple[str, dict[str, Any], str]] = {
    "pipeline": ("pipeline", {}, "baseline: transformers.pipeline, fp32, plain System/User/Assistant prompt, torch threads"),
    "agent": ("agent", {}, "the agent's default path (torch_dtype/quantize_weights/num_threads/decode_loop 'auto': "
                           "the GGUF's own precision, int4 layers and an int8 head, fused projections)"),
    "pipeline-1t": ("pipeline", {"threads": 1}, "reference: the baseline pipeline with 1 torch thread"),
    "generate-fp32": ("generate", {"dtype": "float32"}, "reference: model.generate, chat template, fp32, torch threads"),
    "generate-bf16": ("generate", {"dtype": "bfloat16"}, "reference: model.generate, chat template, bf16 weights, torch threads"),
    "agent-fp32": ("agent", {"torch_dtype": "float32"}, "agent with torch_dtype='float32' (exact fp32)"),
    "agent-int8": ("agent", {"quantize_weights": "int8"}, "agent with quantize_weights='int8' (weight-only int8, bf16 activations)"),
    "agent-int4": ("agent", {"quantize_weights": "int4"}, "agent with quantize_weights='int4' (4-bit groups of 32 as in the GGUF, bf16 head)"),
    "agent-generate": ("agent", {"decode_loop": "generate"}, "agent default, but decode_loop='generate' (model.generate)"),
    "agent-reproducible": ("agent", {"reproducible": True}, "agent default, but reproducible=True"),
    "agent-unfused": ("agent", {"fuse_projections": False}, "agent default, but fuse_projections=False (the model's own layers)"),
    "agent-bf16": ("agent", {"quantize_weights": None}, "agent with quantize_weights=None (bf16 weights, fused projections)"),
    "agent-bf16-unfused": ("agent", {"quantize_weights": None, "fuse_projections": False},
                           "the previous default: bf16 weights, the model's own layers"),
    "llama.cpp": ("llama_cpp", {}, "reference: llama-cpp-python on the same GGUF (only if importable)"),
}

#: The rows of --smoke: one of each kind, so every code path runs.
SMOKE_ROWS = ("pipeline", "agent", "generate-fp32")


# =========================================================================== worker side


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class _Timestamps:
    """A generate() streamer that only records when each generated token arrived."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _figures(started: float, times: list[float], ended: float) -> dict[str, Any]:
    tokens = len(times)
    decode = (tokens - 1) / (times[-1] - times[0]) if tokens > 1 and times[-1] > times[0] else None
    return {"tokens": tokens, "ttft": times[0] - started if times else None, "decode_tps": decode,
            "total": ended - started}


class Worker:
    """Hosts one or more runners in this process and answers the orchestrator's commands."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.default_threads = torch.get_num_threads()
        self.loop = asyncio.new_event_loop()
        self.runners: dict[str, Any] = {}
        self.info: dict[str, Any] = {}

    def threads(self, count: int | None) -> int:
        self.torch.set_num_threads(count or self.default_threads)
        return self.torch.get_num_threads()

    # ------------------------------------------------------------------ setup per kind

    def setup(self, name: str, kind: str, options: dict[str, Any], n: int) -> None:
        getattr(self, f"_setup_{kind}")(name, options, n)

    def _model_dir(self) -> Path:
        from midori_hf_nb import engine
        from midori_hf_nb.sources import default_model_path

        return engine.convert_gguf(default_model_path(), progress=False)

    def _setup_pipeline(self, name: str, options: dict[str, Any], n: int) -> None:
        import transformers

        folder = self._model_dir()
        pipe = transformers.pipeline("text-generation", model=str(folder), dtype=self.torch.float32, device="cpu")
        prompt = f"System: {SYSTEM}\nUser: {USER}\nAssistant:"
        prompt_tokens = len(pipe.tokenizer(prompt)["input_ids"])
        threads = options.get("threads")
        weights = sum(p.numel() * p.element_size() for p in pipe.model.parameters())

        def run(max_new: int) -> dict[str, Any]:
            used = self.threads(threads)
            stamps = _Timestamps()
            started = time.perf_counter()
            out = pipe(prompt, max_new_tokens=max_new, do_sample=False, return_full_text=False, streamer=stamps)
            result = _figures(started, stamps.times, time.perf_counter())
            result.update(threads=used, text=out[0]["generated_text"], prompt_tokens=prompt_tokens)
            return result

        self.runners[name] = run
        self.info[name] = {"weights_bytes": weights, "dtype": "float32"}

    def _setup_generate(self, name: str, options: dict[str, Any], n: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = self._model_dir()
        dtype = getattr(self.torch, options["dtype"])
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        weights = sum(p.numel() * p.element_size() for p in model.parameters())

        def run(max_new: int) -> dict[str, Any]:
            used = self.threads(options.get("threads"))
            stamps = _Timestamps()
            started = time.perf_counter()
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
            with self.torch.inference_mode():
                out = model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=max_new,
                                     do_sample=False, streamer=stamps)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            result = _figures(started, stamps.times, time.perf_counter())
            result.update(threads=used, text=text, prompt_tokens=ids.shape[1])
            return result

        self.runners[name] = run
        self.info[name] = {"weights_bytes": weights, "dtype": options["dtype"]}

    def _agent(self, options: dict[str, Any], n: int) -> Any:
        from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent

        agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=n, progress=False,
                                      **options)
        self.loop.run_until_complete(agent.load())
        return agent

    def _agent_info(self, agent: Any) -> dict[str, Any]:
        footprint = agent.loaded_model.footprint()
        return {"weights_bytes": footprint["bytes"], "dtype": footprint["dtype"],
                "quantization": footprint["quantization"]}

    def _setup_agent(self, name: str, options: dict[str, Any], n: int) -> None:
        from midori_hf_nb import make_payload
        from midori_hf_nb.stats import stats_of

        from midori_hf_nb import engine

        agent = self._agent(options, n)
        payload = make_payload(USER, SYSTEM)
        # the engine sets torch's threads in the generating thread; "auto" measures per step
        setting = engine.resolve_threads(agent.config.num_threads)
        threads = setting if setting is not None else self.default_threads

        def steps_by_threads() -> dict[str, int]:
            governor = agent.loaded_model.governors.get(1)
            return {str(k): v for k, v in governor.steps.items()} if governor else {}

        def run(max_new: int) -> dict[str, Any]:
            started = time.perf_counter()
            response = self.loop.run_until_complete(agent.invoke(payload, max_new_tokens=max_new))
            ended = time.perf_counter()
            stats = stats_of(response)
            # the agent's own figure: from the call to the first token, prompt building and the
            # hand-over to the generation thread included
            return {"prompt_tokens": stats.prompt_tokens, "tokens": stats.completion_tokens,
                    "ttft": stats.call_to_first_token, "decode_tps": stats.decode_tokens_per_second,
                    "total": ended - started, "threads": threads, "text": response.response,
                    "steps_by_threads": steps_by_threads(), "decode_path": stats.decode_path,
                    "decode_path_reason": stats.decode_path_reason}

        self.runners[name] = run
        self.info[name] = self._agent_info(agent)

    def _setup_llama_cpp(self, name: str, options: dict[str, Any], n: int) -> None:
        import llama_cpp  # noqa: F401  (only when installed; never a dependency)

        from midori_hf_nb.sources import default_model_path

        threads = options.get("threads") or self.default_threads
        llm = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=threads, verbose=False)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]

        def run(max_new: int) -> dict[str, Any]:
            times, pieces = [], []
            started = time.perf_counter()
            for chunk in llm.create_chat_completion(messages, max_tokens=max_new, temperature=0.0, stream=True):
                delta = chunk["choices"][0].get("delta", {}).get("content")
                if delta:
                    times.append(time.perf_counter())
                    pieces.append(delta)
            result = _figures(started, times, time.perf_counter())
            result.update(threads=threads, text="".join(pieces))
            return result

        self.runners[name] = run
        self.info[name] = {"weights_bytes": default_model_path().stat().st_size, "dtype": "gguf Q4_1"}

    def _setup_stream(self, name: str, options: dict[str, Any], n: int) -> None:
        """Raw generation versus streaming into a display handle (IPython shell, no kernel)."""
        from IPython.core.interactiveshell import InteractiveShell

        from midori_hf_nb import make_payload

        InteractiveShell.instance()  # display() publishes through a real shell's display publisher
        from midori_hf_nb.notebook.sinks import IPythonSink
        from midori_hf_nb.notebook.streaming import LiveView, stream_to_cell

        agent = self._agent(options, n)
        payload = make_payload(USER, SYSTEM)

        def raw(max_new: int) -> dict[str, Any]:
            started = time.perf_counter()
            response = self.loop.run_until_complete(agent.invoke(payload, max_new_tokens=max_new))
            meta = response.metadata
            return {"tokens": meta["completion_tokens"], "decode_tps": meta["decode_tokens_per_second"],
                    "total": time.perf_counter() - started}

        def cell(throttle: float):
            def run(max_new: int) -> dict[str, Any]:
                view = LiveView(IPythonSink(), throttle=throttle)  # its stats count the display updates
                started = time.perf_counter()
                response = self.loop.run_until_complete(
                    stream_to_cell(agent, payload, view=view, max_new_tokens=max_new))
                meta = response.metadata
                return {"tokens": meta["completion_tokens"], "decode_tps": meta["decode_tokens_per_second"],
                        "total": time.perf_counter() - started, "updates": view.stats.updates}
            return run

        self.runners[f"{name}:raw"] = raw
        self.runners[f"{name}:cell"] = cell(0.1)
        self.runners[f"{name}:cell-every-piece"] = cell(0.0)
        self.info[name] = self._agent_info(agent)

    def _setup_turns(self, name: str, options: dict[str, Any], n: int) -> None:
        """A 10-turn conversation (:data:`TURNS`), with and without the kept KV cache."""
        from midori_hf_nb import make_payload
        from midori_hf_nb.stats import stats_of

        agent = self._agent({k: v for k, v in options.items() if k not in ("turn_tokens", "turn_count")}, n)
        tokens = options.get("turn_tokens", TURN_TOKENS)
        counter = iter(range(10**9))

        def mode(reuse: bool, reproducible: bool = False):
            def run(max_new: int) -> dict[str, Any]:
                agent.kv_reuse = reuse
                session = f"bench-{next(counter)}"  # a new conversation: nothing kept from an earlier run
                memory: list[dict[str, str]] = []
                ttfts, prompts, reused, produced = [], [], [], 0
                started = time.perf_counter()
                for question in TURNS[:options.get("turn_count", len(TURNS))]:
                    payload = make_payload(question, SYSTEM, memory=list(memory), session_id=session)
                    response = self.loop.run_until_complete(agent.invoke(payload, max_new_tokens=min(tokens, max_new),
                                                                         reproducible=reproducible))
                    stats = stats_of(response)
                    ttfts.append(stats.call_to_first_token)
                    prompts.append(stats.prompt_tokens)
                    reused.append(stats.extra.get("reused_prompt_tokens", 0))
                    produced += stats.completion_tokens or 0
                    memory += [{"role": "user", "content": question}, {"role": "assistant", "content": response.response}]
                # "turn 10": the last turn (the third with --smoke)
                return {"ttft_turn1": ttfts[0], "ttft_turn10": ttfts[-1], "turn10_over_turn1": ttfts[-1] / ttfts[0],
                        "ttfts": ttfts, "prompt_tokens": prompts, "reused_tokens": reused, "tokens": produced,
                        "total": time.perf_counter() - started,
                        "answers_start": [m["content"][:40] for m in memory[1::2]]}
            return run

        self.runners[f"{name}:reuse"] = mode(True)
        self.runners[f"{name}:no-reuse"] = mode(False)
        self.runners[f"{name}:reuse-reproducible"] = mode(True, reproducible=True)
        self.info[name] = self._agent_info(agent)

    def _setup_concurrent(self, name: str, options: dict[str, Any], n: int) -> None:
        """8 ``invoke`` calls at once (``asyncio.gather``) versus the same 8 one after another."""
        from midori_hf_nb import make_payload
        from midori_hf_nb.stats import stats_of

        agent = self._agent({k: v for k, v in options.items() if k not in ("turn_tokens", "turn_count")}, n)
        tokens = options.get("turn_tokens", TURN_TOKENS)
        payloads = [make_payload(p, SYSTEM, session_id=f"concurrent-{i}") for i, p in enumerate(GRID_PROMPTS)]
        agent.kv_reuse = False  # every call prefills its whole prompt, in both modes

        def mode(concurrent: bool, reproducible: bool = False):
            def run(max_new: int) -> dict[str, Any]:
                limit = min(tokens, max_new)

                async def all_at_once() -> list[Any]:
                    return await asyncio.gather(*(agent.invoke(p, max_new_tokens=limit, reproducible=reproducible)
                                                  for p in payloads))

                async def in_a_row() -> list[Any]:
                    return [await agent.invoke(p, max_new_tokens=limit, reproducible=reproducible) for p in payloads]

                started = time.perf_counter()
                responses = self.loop.run_until_complete(all_at_once() if concurrent else in_a_row())
                total = time.perf_counter() - started
                produced = sum(stats_of(r).completion_tokens or 0 for r in responses)
                return {"tokens": produced, "total": total, "aggregate_tps": produced / total,
                        "ttft_max": max(stats_of(r).call_to_first_token or 0 for r in responses),
                        "texts": [r.response[:40] for r in responses]}
            return run

        self.runners[f"{name}:concurrent"] = mode(True)
        self.runners[f"{name}:sequential"] = mode(False)
        self.runners[f"{name}:concurrent-reproducible"] = mode(True, reproducible=True)
        self.runners[f"{name}:sequential-reproducible"] = mode(False, reproducible=True)
        self.info[name] = self._agent_info(agent)

    def _setup_grid(self, name: str, options: dict[str, Any], n: int) -> None:
        from midori_hf_nb.compare import compare

        agent = self._agent(options, n)

        def mode(batch_size: int, reproducible: bool = False):
            def run(max_new: int) -> dict[str, Any]:
                started = time.perf_counter()
                frame = compare(GRID_PROMPTS, systems=[SYSTEM], models=agent, batch_size=batch_size, seed=None,
                                settings={"max_new_tokens": [max_new]}, progress=False, reproducible=reproducible)
                total = time.perf_counter() - started
                tokens = int(frame["completion_tokens"].sum())
                return {"tokens": tokens, "total": total, "aggregate_tps": tokens / total,
                        "ok": int((frame["status"] == "ok").sum())}
            return run

        self.runners[f"{name}:batched"] = mode(len(GRID_PROMPTS))
        self.runners[f"{name}:one-by-one"] = mode(1)
        self.runners[f"{name}:batched-reproducible"] = mode(len(GRID_PROMPTS), reproducible=True)
        self.runners[f"{name}:one-by-one-reproducible"] = mode(1, reproducible=True)
        from midori_hf_nb import make_payload
        from midori_hf_nb.stats import stats_of

        probe = agent.generate_batch([make_payload(p, SYSTEM) for p in GRID_PROMPTS[:2]], max_new_tokens=2)
        first = stats_of(probe[0])
        self.info[name] = {**self._agent_info(agent), "batch_decode_path": first.decode_path,
                           "batch_decode_path_reason": first.decode_path_reason}

    # ------------------------------------------------------------------ protocol

    def serve(self, spec: dict[str, Any], out: Any) -> None:
        started = time.perf_counter()
        for name, (kind, options) in spec["rows"].items():
            self.setup(name, kind, options, spec["max_new_tokens"])
        setup_seconds = time.perf_counter() - started
        if spec.get("warm_up", True):
            for run in self.runners.values():  # warm-up: first calls initialise kernels and caches
                run(min(4, spec["max_new_tokens"]))
        out.write(json.dumps({"ready": True, "setup_seconds": setup_seconds, "info": self.info,
                              "runners": list(self.runners)}) + "\n")
        out.flush()
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "run":
                result = self.runners[command["runner"]](command["max_new_tokens"])
                out.write(json.dumps({"result": result}) + "\n")
            elif command["op"] == "memory":
                out.write(json.dumps({"memory": _status()}) + "\n")
            elif command["op"] == "exit":
                break
            out.flush()


def worker_main(spec_text: str) -> int:
    # The protocol uses the original stdout; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(spec_text)
    try:
        Worker().serve(spec, out)
    except Exception as exc:  # reported to the orchestrator, which shows it
        import traceback

        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}) + "\n")
        out.flush()
        return 1
    return 0


# =========================================================================== orchestrator side


class WorkerProcess:
    def __init__(self, rows: dict[str, tuple[str, dict[str, Any]]], max_new_tokens: int, env: dict[str, str],
                 warm_up: bool = True) -> None:
        spec = json.dumps({"rows": rows, "max_new_tokens": max_new_tokens, "warm_up": warm_up})
        self.rows = list(rows)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", spec], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     cwd=str(ROOT))
        self.ready: dict[str, Any] | None = None
        self.error: str | None = None

    def wait_ready(self) -> None:
        message = self._read()
        if "error" in message:
            self.error = message["error"]
        else:
            self.ready = message

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"worker exited with code {self.proc.wait()}"}
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def stats(values: list[float | None]) -> dict[str, Any] | None:
    clean = [v for v in values if v is not None]
    if not clean:
        return None
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean),
            "values": clean}


def rotated(items: list[Any], shift: int) -> list[Any]:
    if not items:
        return []
    shift %= len(items)
    return items[shift:] + items[:shift]


COLD_SCRIPT = r"""
import time
t0 = time.perf_counter()
import asyncio
from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload

async def main():
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=1, progress=False)
    async for piece in agent.stream(make_payload("What is the capital of France?", "You are a helpful assistant.")):
        break
    print("FIRST", time.perf_counter() - t0, flush=True)

asyncio.run(main())
"""


def cold_start(env: dict[str, str], fresh_cache: bool) -> dict[str, Any]:
    """Seconds from spawning a new interpreter to its first streamed token."""
    env = dict(env)
    tmp = None
    if fresh_cache:
        tmp = tempfile.mkdtemp(prefix="midori-bench-cache-")
        env["MIDORI_HF_NB_CACHE"] = tmp
    try:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", COLD_SCRIPT], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, cwd=str(ROOT))
        first = None
        inside = None
        for line in proc.stdout:
            if line.startswith("FIRST"):
                first = time.perf_counter() - started
                inside = float(line.split()[1])
        code = proc.wait()
        return {"seconds": first, "after_interpreter_start": inside, "exit_code": code}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fmt(s: dict[str, Any] | None, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few tokens, one round, no GGUF cold start")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure (default 3; 1 with --smoke)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="new tokens (default 128; 4 with --smoke)")
    parser.add_argument("--rows", default=None, help="comma-separated decode rows (default: all; see ROWS)")
    parser.add_argument("--cold-rounds", type=int, default=None, help="cold starts of each kind (default 2; 1 with --smoke)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start figures")
    parser.add_argument("--no-gguf", action="store_true", help="skip the cold start from the GGUF file")
    parser.add_argument("--extras", default=None,
                        help=f"comma-separated extra rows (default: all of {', '.join(EXTRA_ROWS)}; 'none' for none)")
    parser.add_argument("--turn-tokens", type=int, default=None,
                        help=f"new tokens per answer of the turns/concurrent rows (default {TURN_TOKENS}; 2 with --smoke)")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/bench-<time>.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)

    rounds = args.rounds or (1 if args.smoke else 3)
    max_new = args.max_new_tokens or (4 if args.smoke else 128)
    cold_rounds = args.cold_rounds or (1 if args.smoke else 2)
    skip_gguf = args.no_gguf or args.smoke
    names = args.rows.split(",") if args.rows else list(SMOKE_ROWS if args.smoke else ROWS)
    extras = [] if args.extras == "none" else (args.extras.split(",") if args.extras else list(EXTRA_ROWS))
    if [e for e in extras if e not in EXTRA_ROWS]:
        parser.error(f"unknown extras {extras}; choose from {', '.join(EXTRA_ROWS)}")
    turn_tokens = args.turn_tokens or (2 if args.smoke else TURN_TOKENS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if "pipeline" not in names:
        names.insert(0, "pipeline")
    if "llama.cpp" in names:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            names.remove("llama.cpp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    report: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
        "rounds": rounds, "max_new_tokens": max_new, "prompt": {"system": SYSTEM, "user": USER},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "load_average_before": load_average(),
    }
    try:
        import torch
        import transformers

        report["machine"].update(torch=torch.__version__, transformers=transformers.__version__,
                                 cpu_capability=torch.backends.cpu.get_cpu_capability())
    except ImportError:
        pass

    # ---------------------------------------------------------------- start the workers
    print(f"starting workers ({'smoke' if args.smoke else 'full'} mode: {max_new} new tokens, {rounds} round(s))",
          file=sys.stderr)
    decode_rows = {n: (ROWS[n][0], ROWS[n][1]) for n in names}
    pair_options = {"turn_tokens": turn_tokens, **({"turn_count": 3} if args.smoke else {})}  # smoke: 3 turns
    extra_rows = {e: (e, pair_options if e in ("turns", "concurrent") else {}) for e in extras}
    if args.smoke:  # one process: memory figures are then not per row
        groups = [{**decode_rows, **extra_rows}]
    else:
        groups = [{n: r} for n, r in {**decode_rows, **extra_rows}.items()]
    workers = []
    for group in groups:  # one at a time: loading in parallel would only slow each other down
        worker = WorkerProcess(group, max_new, env, warm_up=not args.smoke)
        worker.wait_ready()
        if worker.error:
            print(f"  worker {list(group)} failed: {worker.error}", file=sys.stderr)
        else:
            print(f"  ready: {', '.join(worker.ready['runners'])} ({worker.ready['setup_seconds']:.1f} s)",
                  file=sys.stderr)
        workers.append(worker)
    by_runner = {r: w for w in workers if w.ready for r in w.ready["runners"]}
    info = {k: v for w in workers if w.ready for k, v in w.ready["info"].items()}

    def run(runner: str) -> dict[str, Any] | None:
        worker = by_runner.get(runner)
        if worker is None:
            return None
        reply = worker.ask({"op": "run", "runner": runner, "max_new_tokens": max_new})
        if "error" in reply:
            print(f"  {runner}: {reply['error']}", file=sys.stderr)
            return None
        return reply["result"]

    try:
        # ------------------------------------------------------------ decode rows, alternating
        decode_names = [n for n in names if n in by_runner]
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in decode_names}
        for r in range(rounds):
            for name in rotated(decode_names, r):
                result = run(name)
                if result is not None:
                    samples[name].append(result)
                    print(f"  round {r + 1}/{rounds} {name}: {result.get('decode_tps') or 0:.2f} tok/s decode, "
                          f"{result['tokens']} tokens", file=sys.stderr)
        stream_names = [n for n in ("stream:raw", "stream:cell", "stream:cell-every-piece") if n in by_runner]
        stream_samples: dict[str, list[dict[str, Any]]] = {n: [] for n in stream_names}
        grid_names = [n for n in ("grid:batched", "grid:one-by-one", "grid:batched-reproducible",
                                  "grid:one-by-one-reproducible") if n in by_runner]
        grid_samples: dict[str, list[dict[str, Any]]] = {n: [] for n in grid_names}
        pair_names = [n for n in ("turns:reuse", "turns:no-reuse", "turns:reuse-reproducible", "concurrent:concurrent",
                                  "concurrent:sequential", "concurrent:concurrent-reproducible",
                                  "concurrent:sequential-reproducible") if n in by_runner]
        pair_samples: dict[str, list[dict[str, Any]]] = {n: [] for n in pair_names}
        for r in range(rounds):
            for name in rotated(pair_names, r):
                result = run(name)
                if result is not None:
                    pair_samples[name].append(result)
                    figure = (f"turn 1 TTFT {result['ttft_turn1']:.3f} s, turn 10 {result['ttft_turn10']:.3f} s"
                              if name.startswith("turns") else f"{result['aggregate_tps']:.2f} tok/s aggregate")
                    print(f"  round {r + 1}/{rounds} {name}: {figure}", file=sys.stderr)
            for name in rotated(stream_names, r):
                result = run(name)
                if result is not None:
                    stream_samples[name].append(result)
            for name in rotated(grid_names, r):
                result = run(name)
                if result is not None:
                    grid_samples[name].append(result)
                    print(f"  round {r + 1}/{rounds} {name}: {result['aggregate_tps']:.2f} tok/s aggregate",
                          file=sys.stderr)
        memory = {}
        for worker in workers:
            if worker.ready:
                reply = worker.ask({"op": "memory"})
                for name in worker.rows:
                    memory[name] = {**reply.get("memory", {}), "shared_with": [n for n in worker.rows if n != name]}
    finally:
        for worker in workers:
            worker.close()

    # ---------------------------------------------------------------- cold start, alternating
    cold: dict[str, list[dict[str, Any]]] = {}
    if not args.no_cold:
        kinds = ["cache"] + ([] if skip_gguf else ["gguf"])
        cold = {k: [] for k in kinds}
        for r in range(cold_rounds):
            for kind in rotated(kinds, r):
                result = cold_start(env, fresh_cache=(kind == "gguf"))
                cold[kind].append(result)
                print(f"  cold start {r + 1}/{cold_rounds} from {kind}: {result['seconds']} s", file=sys.stderr)
    report["load_average_after"] = load_average()

    # ---------------------------------------------------------------- figures and targets
    rows_out: dict[str, Any] = {}
    for name in decode_names:
        s = samples[name]
        mem = memory.get(name, {})
        rows_out[name] = {
            "description": ROWS[name][2], **info.get(name, {}),
            "decode_tps": stats([x["decode_tps"] for x in s]), "ttft": stats([x["ttft"] for x in s]),
            "total": stats([x["total"] for x in s]), "tokens": [x["tokens"] for x in s],
            "prompt_tokens": s[0].get("prompt_tokens") if s else None,
            "threads": sorted({str(x["threads"]) for x in s}), "peak_rss_bytes": mem.get("VmHWM"),
            "steps_by_threads": s[-1].get("steps_by_threads") if s else None,
            "rss_bytes": mem.get("VmRSS"), "memory_shared_with": mem.get("shared_with"),
            "answer_start": s[0]["text"][:160] if s else None,
            "decode_paths": sorted({f"{x['decode_path']}" + (f" ({x['decode_path_reason']})"
                                                             if x.get("decode_path_reason") else "")
                                    for x in s if x.get("decode_path")}),
        }
    base = rows_out.get("pipeline", {})

    def ratio(row: dict[str, Any], key: str, invert: bool = False) -> float | None:
        a, b = row.get(key), base.get(key)
        if not a or not b or not a["median"] or not b["median"]:
            return None
        return b["median"] / a["median"] if invert else a["median"] / b["median"]

    for row in rows_out.values():
        row["ratio_decode"] = ratio(row, "decode_tps")
        row["ratio_ttft"] = ratio(row, "ttft")
        row["ratio_total_speed"] = ratio(row, "total", invert=True)

    stream_out = {n: {"decode_tps": stats([x["decode_tps"] for x in v]), "total": stats([x["total"] for x in v]),
                      "updates": [x.get("updates") for x in v]} for n, v in stream_samples.items()}
    grid_out = {n: {"aggregate_tps": stats([x["aggregate_tps"] for x in v]), "total": stats([x["total"] for x in v]),
                    "tokens": [x["tokens"] for x in v]} for n, v in grid_samples.items()}
    turns_out = {n: {"ttft_turn1": stats([x["ttft_turn1"] for x in v]), "ttft_turn10": stats([x["ttft_turn10"] for x in v]),
                     "turn10_over_turn1": stats([x["turn10_over_turn1"] for x in v]),
                     "prompt_tokens": v[-1]["prompt_tokens"] if v else None,
                     "reused_tokens": v[-1]["reused_tokens"] if v else None, "samples": v}
                 for n, v in pair_samples.items() if n.startswith("turns")}
    concurrent_out = {n: {"aggregate_tps": stats([x["aggregate_tps"] for x in v]), "total": stats([x["total"] for x in v]),
                          "tokens": [x["tokens"] for x in v]}
                      for n, v in pair_samples.items() if n.startswith("concurrent")}
    cold_out = {k: {"seconds": stats([x["seconds"] for x in v]),
                    "after_interpreter_start": stats([x["after_interpreter_start"] for x in v])} for k, v in cold.items()}

    def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
        """Per-round ratio a/b (the rounds ran side by side)."""
        return stats([x[key] / y[key] for x, y in zip(a, b) if x.get(key) and y.get(key)])

    targets: dict[str, Any] = {}
    agent = rows_out.get("agent")
    if agent and base:
        targets["decode >= 2.5x pipeline"] = {"value": agent["ratio_decode"], "goal": 2.5,
                                              "met": (agent["ratio_decode"] or 0) >= 2.5}
        ttft_ratio = agent["ratio_ttft"]
        targets["time to first token <= pipeline"] = {"value": ttft_ratio, "goal": 1.0,
                                                      "met": ttft_ratio is not None and ttft_ratio <= 1.0}
        if agent.get("peak_rss_bytes") and agent.get("weights_bytes"):
            limit = 1.5 * agent["weights_bytes"] + 400 * 2**20
            shared = bool(agent.get("memory_shared_with"))  # smoke mode: not the agent's own figure
            targets["peak RSS <= 1.5x weights + 400 MB"] = {
                "value": agent["peak_rss_bytes"], "goal": limit,
                "met": None if shared else agent["peak_rss_bytes"] <= limit, "shared_process": shared}
    if "pipeline-1t" in rows_out and agent:
        one = rows_out["pipeline-1t"]
        if one["decode_tps"] and agent["decode_tps"]:
            targets["(reference) decode vs pipeline at 1 thread"] = {
                "value": agent["decode_tps"]["median"] / one["decode_tps"]["median"], "goal": None, "met": None}
    if cold_out.get("cache") and cold_out.get("gguf") and cold_out["cache"]["seconds"] and cold_out["gguf"]["seconds"]:
        value = cold_out["gguf"]["seconds"]["median"] / cold_out["cache"]["seconds"]["median"]
        targets["cold start: GGUF / cache >= 6x"] = {"value": value, "goal": 6.0, "met": value >= 6.0}
    if stream_samples.get("stream:raw") and stream_samples.get("stream:cell"):
        per_round = paired(stream_samples["stream:cell"], stream_samples["stream:raw"], "decode_tps")
        cost = 1 - per_round["median"] if per_round else None
        targets["streaming into a cell costs <= 5%"] = {"value": cost, "goal": 0.05,
                                                        "met": cost is not None and cost <= 0.05,
                                                        "per_round_ratio": per_round}
        every = stream_samples.get("stream:cell-every-piece")
        if every:
            per_piece = paired(every, stream_samples["stream:raw"], "decode_tps")
            targets["(reference) display update on every piece costs"] = {
                "value": 1 - per_piece["median"] if per_piece else None, "goal": None, "met": None}
    if grid_samples.get("grid:batched") and grid_samples.get("grid:one-by-one"):
        per_round = paired(grid_samples["grid:batched"], grid_samples["grid:one-by-one"], "aggregate_tps")
        value = per_round["median"] if per_round else None
        targets["grid of 8 prompts: batched >= 3x one by one"] = {"value": value, "goal": 3.0,
                                                                 "met": value is not None and value >= 3.0,
                                                                 "per_round_ratio": per_round}
    if pair_samples.get("turns:reuse"):
        value = turns_out["turns:reuse"]["turn10_over_turn1"]["median"]
        targets["turn-10 TTFT <= 1.5x turn-1 TTFT with KV reuse"] = {"value": value, "goal": 1.5, "met": value <= 1.5}
    if pair_samples.get("turns:no-reuse"):
        targets["(reference) turn-10 / turn-1 TTFT without reuse"] = {
            "value": turns_out["turns:no-reuse"]["turn10_over_turn1"]["median"], "goal": None, "met": None}
    if pair_samples.get("turns:reuse") and pair_samples.get("turns:no-reuse"):
        per_round = paired(pair_samples["turns:no-reuse"], pair_samples["turns:reuse"], "ttft_turn10")
        targets["(reference) turn-10 TTFT, without / with reuse"] = {
            "value": per_round["median"] if per_round else None, "goal": None, "met": None}
    if pair_samples.get("concurrent:concurrent") and pair_samples.get("concurrent:sequential"):
        per_round = paired(pair_samples["concurrent:concurrent"], pair_samples["concurrent:sequential"], "aggregate_tps")
        value = per_round["median"] if per_round else None
        targets["8 concurrent invokes >= 3x 8 in a row"] = {"value": value, "goal": 3.0,
                                                            "met": value is not None and value >= 3.0,
                                                            "per_round_ratio": per_round}
    targets.update(reproducible_costs(rows_out, grid_samples, pair_samples, paired))
    if "llama.cpp" in rows_out and agent and rows_out["llama.cpp"]["decode_tps"] and agent["decode_tps"]:
        targets["(reference) agent decode / llama.cpp decode"] = {
            "value": agent["decode_tps"]["median"] / rows_out["llama.cpp"]["decode_tps"]["median"],
            "goal": None, "met": None}
    report.update(rows=rows_out, streaming=stream_out, grid=grid_out, turns=turns_out, concurrent=concurrent_out,
                  cold_start=cold_out, targets=targets,
                  grid_batch_decode_path=info.get("grid", {}).get("batch_decode_path"))

    # ---------------------------------------------------------------- print
    print()
    print(f"decode rows: {max_new} new tokens, greedy, {rounds} round(s); median [min-max]; ratios to 'pipeline'")
    header = ("row", "decode tok/s", "x", "TTFT s", "x", "total s", "x", "prompt", "tokens", "peak RSS MB",
              "weights MB", "threads")
    lines = [header]
    for name, row in rows_out.items():
        lines.append((name, fmt(row["decode_tps"]), ratio_text(row["ratio_decode"]), fmt(row["ttft"], 3),
                      ratio_text(row["ratio_ttft"]), fmt(row["total"]), ratio_text(row["ratio_total_speed"]),
                      str(row.get("prompt_tokens") or "-"), "/".join(map(str, sorted(set(row["tokens"])))),
                      f"{row['peak_rss_bytes'] / 2**20:.0f}" + ("*" if row["memory_shared_with"] else "")
                      if row["peak_rss_bytes"] else "-",
                      f"{row['weights_bytes'] / 2**20:.0f}" if row.get("weights_bytes") else "-",
                      ",".join(map(str, row["threads"]))))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)))
    print("(TTFT x: agent / baseline, lower is better; total x: baseline / row, higher is better;"
          " * = process shared with other rows)")
    governed = {n: r["steps_by_threads"] for n, r in rows_out.items() if r.get("steps_by_threads")}
    if governed:
        print("num_threads='auto': decode steps run with each thread count (all rounds, warm-up included): "
              + "; ".join(f"{n} {steps}" for n, steps in governed.items()))
    paths = {n: r["decode_paths"] for n, r in rows_out.items() if r.get("decode_paths")}
    if paths:
        print("decode path: " + "; ".join(f"{n} {', '.join(p)}" for n, p in paths.items()))
    for name, row in stream_out.items():
        print(f"{name:24s} decode tok/s {fmt(row['decode_tps'])}  updates {row['updates']}")
    for name, row in grid_out.items():
        print(f"{name:24s} aggregate tok/s {fmt(row['aggregate_tps'])}  total s {fmt(row['total'])}")
    if info.get("grid"):
        print(f"grid batches decode through: {info['grid'].get('batch_decode_path')}"
              + (f" ({info['grid']['batch_decode_path_reason']})" if info['grid'].get('batch_decode_path_reason') else ""))
    for name, row in turns_out.items():
        print(f"{name:24s} TTFT turn 1 {fmt(row['ttft_turn1'], 3)}  turn 10 {fmt(row['ttft_turn10'], 3)}  "
              f"turn 10 / turn 1 {fmt(row['turn10_over_turn1'])}  prompt tokens {row['prompt_tokens']}")
    for name, row in concurrent_out.items():
        print(f"{name:24s} aggregate tok/s {fmt(row['aggregate_tps'])}  total s {fmt(row['total'])}")
    for kind, row in cold_out.items():
        print(f"cold start from {kind:6s} s {fmt(row['seconds'])}")
    print()
    print("targets:" + (" (smoke mode: a few tokens in one shared process; the figures mean nothing)"
                        if args.smoke else ""))
    for name, t in targets.items():
        value = t["value"]
        shown = "-" if value is None else (f"{value / 2**20:.0f} MB (limit {t['goal'] / 2**20:.0f} MB)"
                                            if "RSS" in name else f"{value:.3f}")
        verdict = ("(process shared with other rows: not judged)" if t.get("shared_process") else "") \
            if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  {name:50s} {shown:28s} {verdict}")

    output = Path(args.output) if args.output else RESULTS / f"bench-{datetime.now():%Y%m%d-%H%M%S}{'-smoke' if args.smoke else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    failed = [w for w in workers if w.error]
    slow = off_engine_rows(rows_out)
    if info.get("grid") and info["grid"].get("batch_decode_path") != "engine":
        slow["grid:batched"] = [f"{info['grid'].get('batch_decode_path')} ({info['grid'].get('batch_decode_path_reason')})"]
    for name, paths in slow.items():
        print(f"FAILED: row {name!r} should decode through the engine's loop but took {', '.join(paths)}",
              file=sys.stderr)
    return 1 if (failed and not rows_out) or slow else 0


def reproducible_costs(rows_out: dict[str, Any], grid: dict[str, list[dict[str, Any]]],
                       pairs: dict[str, list[dict[str, Any]]], paired: Any) -> dict[str, Any]:
    """The closing figures of reproducible mode: each a per-round ratio reproducible / default
    (speed: below 1 is the cost; time to first token: above 1 is the cost)."""
    out: dict[str, Any] = {}
    one, exact = rows_out.get("agent"), rows_out.get("agent-reproducible")
    if one and exact and one["decode_tps"] and exact["decode_tps"]:
        out["(reproducible cost) decode tok/s, reproducible / default"] = {
            "value": exact["decode_tps"]["median"] / one["decode_tps"]["median"], "goal": None, "met": None}
    for label, a, b, samples, key in (
            ("grid batched", "grid:batched-reproducible", "grid:batched", grid, "aggregate_tps"),
            ("grid one by one", "grid:one-by-one-reproducible", "grid:one-by-one", grid, "aggregate_tps"),
            ("8 concurrent invokes", "concurrent:concurrent-reproducible", "concurrent:concurrent", pairs,
             "aggregate_tps"),
            ("8 invokes in a row", "concurrent:sequential-reproducible", "concurrent:sequential", pairs,
             "aggregate_tps"),
            ("turn-10 TTFT with KV reuse", "turns:reuse-reproducible", "turns:reuse", pairs, "ttft_turn10")):
        if samples.get(a) and samples.get(b):
            per_round = paired(samples[a], samples[b], key)
            what = "TTFT" if key.startswith("ttft") else "aggregate tok/s"
            out[f"(reproducible cost) {label}: {what}, reproducible / default"] = {
                "value": per_round["median"] if per_round else None, "goal": None, "met": None,
                "per_round_ratio": per_round}
    if grid.get("grid:batched-reproducible") and grid.get("grid:one-by-one-reproducible"):
        per_round = paired(grid["grid:batched-reproducible"], grid["grid:one-by-one-reproducible"], "aggregate_tps")
        out["(reproducible) grid batched / one by one"] = {"value": per_round["median"] if per_round else None,
                                                           "goal": None, "met": None, "per_round_ratio": per_round}
    if pairs.get("concurrent:concurrent-reproducible") and pairs.get("concurrent:sequential-reproducible"):
        per_round = paired(pairs["concurrent:concurrent-reproducible"], pairs["concurrent:sequential-reproducible"],
                           "aggregate_tps")
        out["(reproducible) 8 concurrent / 8 in a row"] = {"value": per_round["median"] if per_round else None,
                                                           "goal": None, "met": None, "per_round_ratio": per_round}
    return out


def off_engine_rows(rows_out: dict[str, Any]) -> dict[str, list[str]]:
    """Agent rows meant for the engine's decode loop (every one without decode_loop='generate')
    whose generations took another path: a silent slowdown, reported as a failure."""
    off = {}
    for name, row in rows_out.items():
        kind, options, _ = ROWS[name]
        if kind != "agent" or options.get("decode_loop") == "generate":
            continue
        paths = row.get("decode_paths") or ["(no decode path reported)"]
        if paths != ["engine"]:
            off[name] = paths
    return off


if __name__ == "__main__":
    sys.exit(main())
