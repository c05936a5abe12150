"""The seed document's examples, run as written (only their import lines changed).

The seed document is the reference adapter's documentation, kept in the repository as test data
(``tests/data/protocol/reference_adapter.md``, beside ``protocol.md``), so these tests run in any clone.

The examples name ``TinyLlama/TinyLlama-1.1B-Chat-v1.0``, which cannot be downloaded here. A
fake offline hub cache in a temporary ``HF_HOME`` holds a tiny random model under that id
(``hub/models--TinyLlama--TinyLlama-1.1B-Chat-v1.0/snapshots/<commit>/`` plus ``refs/main``),
loaded with ``HF_HUB_OFFLINE=1`` through the ordinary hub-id path. Its saved
``generation_config.json`` carries a ``sequence_bias`` that makes every generation write the
seed's JSON tool call, so the seed's tool example, whose code may not change, gets a tool
call from a real generation.

The code blocks are cut from the seed file, their imports rewritten to ``midori_hf_nb``, and
run in a fresh Python process (the hub cache location is read when huggingface_hub is
imported) with top-level ``await`` allowed, as in a notebook cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "tests" / "data" / "protocol" / "reference_adapter.md"
HUB_ID = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
#: What the fake TinyLlama always writes: the seed's own JSON tool-call example.
TARGET = '{"tool_calls": [{"name": "search", "arguments": {"query": "example"}}]}'
IMPORT_RE = re.compile(r"^from midori_ai_agent_(?:huggingface|base) import (.+)$", re.MULTILINE)

# --------------------------------------------------------------------------- the seed's code blocks


def seed_blocks() -> dict[str, list[tuple[str, str]]]:
    """Code blocks of the seed by the heading they sit under: ``{heading: [(language, code)]}``."""
    blocks: dict[str, list[tuple[str, str]]] = {}
    heading = ""
    lines = SEED.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            language, body = line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.setdefault(heading, []).append((language, "\n".join(body) + "\n"))
        i += 1
    return blocks


def python_block(heading: str, index: int = 0) -> str:
    """A python block of the seed with only its import lines changed."""
    code = [c for lang, c in seed_blocks()[heading] if lang == "python"][index]
    changed = IMPORT_RE.sub(r"from midori_hf_nb import \1", code)
    original, rewritten = code.splitlines(), changed.splitlines()
    assert len(original) == len(rewritten)
    assert all(a == b or IMPORT_RE.match(a) for a, b in zip(original, rewritten)), "only imports may change"
    return changed


def test_the_seed_examples_are_where_expected():
    blocks = seed_blocks()
    for heading in ("Direct Usage", "Streaming Support", "Factory Integration", "Configuration File",
                    "Memory History", "Quantization", "Usage Example"):
        assert any(lang == "python" for lang, _ in blocks[heading]), heading
    assert "invoke_with_tools(payload, tools=[search])" in python_block("Usage Example")
    assert 'model="TinyLlama/TinyLlama-1.1B-Chat-v1.0"' in python_block("Direct Usage")


# --------------------------------------------------------------------------- the fake offline hub


def forcing_sequence_bias(token_ids: list[int]) -> list[list]:
    """``sequence_bias`` entries that force ``token_ids`` from the start of any generation.

    The entry for the first k tokens adds ``10 * 2**k`` to token k when the k-1 before it were
    just generated; that bias exceeds the sum of all shorter entries, so the longest matching
    prefix always wins, also for repeated tokens.
    """
    return [[token_ids[:k], 10.0 * 2.0 ** k] for k in range(1, len(token_ids) + 1)]


@pytest.fixture(scope="module")
def fake_hf_home(tmp_path_factory, tiny_model):
    from transformers import AutoTokenizer, GenerationConfig

    home = tmp_path_factory.mktemp("hf-home")
    commit = hashlib.sha1(b"midori-hf-nb offline stand-in for " + HUB_ID.encode()).hexdigest()
    repo = home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_model, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    ids = tokenizer.encode(TARGET, add_special_tokens=False) + [tokenizer.eos_token_id]
    config = GenerationConfig.from_pretrained(snapshot)
    config.sequence_bias = forcing_sequence_bias(ids)
    config.save_pretrained(snapshot)
    saved = json.loads((snapshot / "generation_config.json").read_text())
    assert saved["sequence_bias"] == forcing_sequence_bias(ids)  # it lives in the model's files
    return home


# --------------------------------------------------------------------------- running the examples

RUNNER = r'''
import ast, asyncio, json, sys

plan = json.load(open(sys.argv[1]))
report = []

async def run_code(code, namespace):
    compiled = compile(code, "<seed example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        await result

async def main():
    for session in plan:
        namespace = {"__name__": "__main__", "__report__": {}}
        entry = {"session": session["name"], "error": None, "values": namespace["__report__"]}
        report.append(entry)
        for name, code in session["steps"]:
            print(f"\n=== {session['name']}: {name}", flush=True)
            try:
                await run_code(code, namespace)
            except Exception as exc:
                entry["error"] = {"step": name, "type": type(exc).__name__, "message": str(exc)}
                break

asyncio.run(main())
print("\nREPORT " + json.dumps(report, default=repr))
'''

CHECK_LOADED = """
__report__["source_kind"] = agent.loaded_model.spec.source.kind if agent.loaded_model else None
"""


def _plan(workdir: Path) -> list[dict]:
    direct = python_block("Direct Usage")
    streaming = python_block("Streaming Support")
    tools = python_block("Usage Example")
    toml = next(code for lang, code in seed_blocks()["Configuration File"] if lang == "toml")
    (workdir / "config.toml").write_text(toml)
    return [
        {"name": "tools", "steps": [
            ("Direct Usage", direct),
            ("Streaming Support", streaming + CHECK_LOADED),
            ("Tool Support", tools),
            ("check", '__report__["tool_calls"] = response.tool_calls\n'
                      '__report__["response"] = response.response\n'
                      '__report__["raw_text"] = response.metadata["raw_text"]\n'
                      '__report__["path"] = agent.loaded_model.path\n'),
        ]},
        {"name": "factory", "steps": [("Direct Usage", direct), ("Factory Integration", python_block("Factory Integration"))]},
        {"name": "config", "steps": [
            ("Direct Usage", direct),
            ("Configuration File", python_block("Configuration File")),
            ("check", '__report__["config"] = {k: getattr(agent.config, k) for k in '
                      '("model", "device", "torch_dtype", "max_new_tokens", "temperature")}\n'
                      'response = await agent.invoke(payload)\n__report__["response"] = response.response\n'),
        ]},
        {"name": "memory", "steps": [
            ("Direct Usage", direct),
            ("Memory History", python_block("Memory History")),
            ("check", "from midori_hf_nb.prompting import build_prompt\n"
                      "response = await agent.invoke(payload)\n"
                      "prompt = build_prompt(agent.loaded_model.tokenizer, payload, context_window=4096, max_new_tokens=512)\n"
                      '__report__["prompt"] = prompt.text\n__report__["response"] = response.response\n'),
        ]},
        {"name": "quantization", "steps": [
            ("Direct Usage", direct),  # the block relies on the import made there
            ("Quantization", python_block("Quantization")),
            ("check", '__report__["load_in_4bit"] = agent.config.load_in_4bit\n'
                      '__report__["is_loaded"] = agent.is_loaded\n'),
        ]},
    ]


@pytest.fixture(scope="module")
def seed_run(fake_hf_home, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seed-run")
    (workdir / "plan.json").write_text(json.dumps(_plan(workdir)))
    (workdir / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(fake_hf_home), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "runner.py", "plan.json"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("REPORT "))
    report = {entry["session"]: entry for entry in json.loads(line[len("REPORT "):])}
    sections = {}
    for chunk in proc.stdout.split("\n=== ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title] = body
    return report, sections


def test_tool_example_runs_as_written_and_shows_tool_calls(seed_run):
    report, output = seed_run
    tools = report["tools"]
    assert tools["error"] is None, tools["error"]
    values = tools["values"]
    assert values["source_kind"] == "hub" and values["path"] == HUB_ID  # loaded by hub id, offline
    assert values["raw_text"] == TARGET  # the real generation wrote the call
    assert [(c["name"], c["arguments"]) for c in values["tool_calls"]] == [("search", {"query": "example"})]
    assert values["tool_calls"][0]["id"]
    assert values["response"] == ""
    assert output["tools: Tool Support"].strip() == "Tool: search, Args: {'query': 'example'}"


def test_direct_usage_and_streaming_run(seed_run):
    report, output = seed_run
    assert report["tools"]["error"] is None
    # no tools offered: the model's text is the answer, printed whole and streamed piece by piece
    assert output["tools: Direct Usage"].strip() == TARGET
    assert output["tools: Streaming Support"].strip() == TARGET


def test_factory_example_with_cuda_fails_clearly_at_first_use(seed_run):
    error = seed_run[0]["factory"]["error"]
    assert error is not None and error["step"] == "Factory Integration"
    assert error["type"] == "DeviceError"
    assert "cuda" in error["message"].lower() and "device='cpu'" in error["message"]


def test_configuration_file_example(seed_run):
    entry = seed_run[0]["config"]
    assert entry["error"] is None, entry["error"]
    assert entry["values"]["config"] == {"model": HUB_ID, "device": "auto", "torch_dtype": "auto",
                                         "max_new_tokens": 512, "temperature": 0.7}
    assert entry["values"]["response"] == TARGET


def test_memory_history_example(seed_run):
    entry = seed_run[0]["memory"]
    assert entry["error"] is None, entry["error"]
    prompt = entry["values"]["prompt"]
    assert prompt.index("My name is Alice") < prompt.index("Hello Alice!") < prompt.index("What is my name?")
    assert entry["values"]["response"] == TARGET


def test_quantization_examples_construct_agents(seed_run):
    entry = seed_run[0]["quantization"]
    assert entry["error"] is None, entry["error"]
    assert entry["values"] == {"load_in_4bit": True, "is_loaded": False}
