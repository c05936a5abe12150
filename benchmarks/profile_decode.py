"""Where a decode step's time goes: Python versus operators, operators per token, and the floor
set by reading the weights.

    python benchmarks/profile_decode.py                          # rows agent,agent-fp32,agent-int4
    python benchmarks/profile_decode.py --rows agent --steps 48 --capabilities native,default
    python benchmarks/profile_decode.py --smoke                  # 4 steps, one row: checks that it runs

Each (row, CPU kind) runs in its own process: the CPU kind ``native`` is torch's own choice of
vector kernels, ``default`` sets ``ATEN_CPU_CAPABILITY=default`` (torch's kernels without AVX2;
``avx2`` forces the AVX2 kernels on a newer CPU). The process loads the default model the way the
agent does (``engine.load`` with the row's options), prefills the bench prompt and then times
``--steps`` decode steps as the engine's loop runs them (one forward of the last token over the
KV cache, argmax), every row in one process, rows alternating round by round, on the thread
counts of ``--threads`` (default 1: what the engine's governor picks on a busy machine):

* **step ms**: the median wall time of a step without the profiler (median over rounds);
* **operators per token**: aten operators a step calls, counted by ``torch.profiler`` (top-level:
  called from Python or a module's forward; all: nested ones included);
* **in operators**: the share of the profiled step spent inside top-level operators; the rest is
  Python (module calls, the cache's bookkeeping, hooks) and dispatch between operators. The
  profiler adds about a microsecond per operator to both, so the split is an estimate;
* **weights MB read per token**: every weight tensor a step reads (the embedding table counts one
  row); **floor ms**: those bytes over the memory bandwidth measured here (a large tensor copy, per
  thread count), the time a step could not beat.

Prints a Markdown table and writes ``benchmarks/results/profile_decode-<time>.json``. The machine
may be shared: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SYSTEM = "You are a helpful assistant."
USER = "Write a detailed essay about the history of the steam engine, its inventors and its impact on industry."

#: name -> agent options (HuggingFaceConfig fields)
ROWS: dict[str, dict[str, Any]] = {
    "agent": {},
    "agent-unfused": {"fuse_projections": False},
    "agent-bf16": {"quantize_weights": None},
    "agent-bf16-unfused": {"quantize_weights": None, "fuse_projections": False},
    "agent-fp32": {"torch_dtype": "float32"},
    "agent-int8": {"quantize_weights": "int8"},
    "agent-int4": {"quantize_weights": "int4"},
    "agent-int4-unfused": {"quantize_weights": "int4", "fuse_projections": False},
}


# =========================================================================== worker side


def _bandwidth(torch: Any, threads: int, megabytes: int = 256) -> float:
    """Bytes per second of a large tensor copy (read + write counted) on ``threads`` threads."""
    torch.set_num_threads(threads)
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    return 2 * source.numel() * 4 / min(times)


def _weights_read(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer once, the embedding
    table one row (a tied head reads the whole table as the output layer)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        if tensor is embedding and head_weight is not embedding:
            total += tensor.shape[1] * tensor.element_size()  # one row of the input embeddings
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def _load(options: dict[str, Any]) -> Any:
    from midori_hf_nb import DEFAULT_MODEL, HuggingFaceConfig
    from midori_hf_nb import engine

    config = HuggingFaceConfig(model=DEFAULT_MODEL, device="cpu", progress=False, **options)
    return engine.load(engine.spec_for(config), progress=False)


def worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Load every row of ``spec`` in this process; time their steps in alternating rounds; profile each."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from midori_hf_nb.engine import capabilities

    loaded = {row: _load(options) for row, options in spec["rows"].items()}
    steps = spec["steps"]

    def decode(lm: Any, count: int) -> tuple[list[float], list[int]]:
        """Prefill the bench prompt, then ``count`` steps; each step's wall time and the tokens."""
        model, argument = lm.model, lm.decode_support.cache_argument
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        prompt = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            cache = capabilities.new_dynamic_cache(model)
            out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{argument: cache})
            token = torch.argmax(out.logits[:, -1, :].float(), dim=-1)
            times, tokens = [], [int(token)]
            for _ in range(count):
                started = time.perf_counter()
                out = model(input_ids=token[:, None], use_cache=True, **{argument: cache})
                token = torch.argmax(out.logits[:, -1, :].float(), dim=-1)
                tokens.append(int(token))
                times.append(time.perf_counter() - started)
        return times, tokens

    thread_counts = spec["threads"]
    for lm in loaded.values():
        decode(lm, 2)  # warm-up
    step_ms: dict[str, dict[int, list[float]]] = {row: {t: [] for t in thread_counts} for row in loaded}
    tokens: dict[str, list[int]] = {}
    names = list(loaded)
    for round_ in range(spec["rounds"]):
        for row in names[round_ % len(names):] + names[:round_ % len(names)]:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                times, tokens[row] = decode(loaded[row], steps)
                step_ms[row][threads].append(statistics.median(times) * 1000)
    bandwidth = {t: _bandwidth(torch, t) for t in thread_counts}
    results = []
    for row, lm in loaded.items():
        torch.set_num_threads(thread_counts[0])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            times, _ = decode(lm, steps)
            profiled_wall = sum(times)
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        cut = _prefill_end(prof)  # the decode steps only: from the second forward on
        top = [e for e in events if e.time_range.start >= cut and not _has_aten_parent(e)]
        nested = [e for e in events if e.time_range.start >= cut]
        op_time = sum(e.time_range.elapsed_us() for e in top) / 1e6
        count_by_name: Counter = Counter()
        time_by_name: Counter = Counter()
        for e in top:
            count_by_name[e.name] += 1
            time_by_name[e.name] += e.time_range.elapsed_us()
        read = _weights_read(lm.model)
        results.append({
            "row": row, "capability": spec["capability"], "options": spec["rows"][row],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "dtype": lm.spec.dtype, "quantization": lm.spec.quantization,
            "fused_projections": getattr(lm, "fused_projections", None),
            "step_ms": {str(t): statistics.median(v) for t, v in step_ms[row].items()},
            "step_ms_rounds": {str(t): v for t, v in step_ms[row].items()},
            "profiled_step_ms": profiled_wall / steps * 1000,
            "ops_per_token_top": len(top) / steps,
            "ops_per_token_all": len(nested) / steps,
            "in_operators_share": op_time / profiled_wall if profiled_wall else None,
            "top_operators": [(name, count / steps, time_by_name[name] / steps / 1000)
                              for name, count in time_by_name.most_common(12) for count in [count_by_name[name]]],
            "weights_read_bytes": read,
            "bandwidth_bytes_per_s": {str(t): b for t, b in bandwidth.items()},
            "floor_ms": {str(t): read / b * 1000 for t, b in bandwidth.items()},
            "tokens": tokens[row][:16],
        })
    return results


def _has_aten_parent(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _prefill_end(prof: Any) -> float:
    """End time of the first model forward (the prefill) in the profile, in microseconds."""
    linears = sorted((e for e in prof.events() if e.name in ("aten::linear", "aten::embedding")),
                     key=lambda e: e.time_range.start)
    embeddings = [e for e in linears if e.name == "aten::embedding"]
    return embeddings[1].time_range.start if len(embeddings) > 1 else 0.0


# =========================================================================== orchestrator side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="agent-bf16-unfused,agent-bf16,agent-fp32,agent-unfused,agent")
    parser.add_argument("--capabilities", default="native,default",
                        help="comma-separated: native (torch's choice), default, avx2, avx512 (ATEN_CPU_CAPABILITY)")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--threads", default="1", help="comma-separated thread counts ('all': every core)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        print(json.dumps(worker(json.loads(args.worker))), file=out, flush=True)
        return 0
    rows = ["agent"] if args.smoke else args.rows.split(",")
    kinds = ["native"] if args.smoke else args.capabilities.split(",")
    steps, rounds = (4, 1) if args.smoke else (args.steps, args.rounds)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    results = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = sorted({cores if t == "all" else int(t) for t in args.threads.split(",")})
    for kind in kinds:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("ATEN_CPU_CAPABILITY", None)
        if kind != "native":
            env["ATEN_CPU_CAPABILITY"] = kind
        spec = {"rows": {row: ROWS[row] for row in rows}, "capability": kind, "steps": steps, "rounds": rounds,
                "threads": threads}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=str(ROOT),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            print(f"[{kind}]: worker failed with code {proc.returncode}", file=sys.stderr)
            continue
        for result in json.loads(proc.stdout.strip().splitlines()[-1]):
            results.append(result)
            print(f"  {result['row']} [{kind}]: {result['step_ms']} ms per step", file=sys.stderr)
    print(f"| row | CPU kind | step ms ({', '.join(map(str, threads))} threads) | ops per token (top / all) | "
          "in operators | weights MB read | floor ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ms = " / ".join(f"{v:.1f}" for v in r["step_ms"].values())
        floor = " / ".join(f"{v:.1f}" for v in r["floor_ms"].values())
        print(f"| {r['row']} | {r['capability']} ({r['torch_capability']}) | {ms} | "
              f"{r['ops_per_token_top']:.0f} / {r['ops_per_token_all']:.0f} | {100 * r['in_operators_share']:.0f} % | "
              f"{r['weights_read_bytes'] / 1e6:.0f} | {floor} |")
    for r in results:
        print(f"\n{r['row']} [{r['capability']}] top-level operators per token by time (count, ms, profiled):")
        for name, count, ms in r["top_operators"]:
            print(f"  {name:36s} {count:6.1f} {ms:7.2f}")
    report = {"started": datetime.now().isoformat(timespec="seconds"), "load_average": os.getloadavg(),
              "steps": steps, "rounds": rounds, "results": results}
    output = Path(args.output) if args.output else \
        RESULTS / f"profile_decode-{datetime.now():%Y%m%d-%H%M%S}{'-smoke' if args.smoke else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
