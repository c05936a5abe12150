"""The package is what its README says it is: small modules, imports that form no cycle (type-only
imports included), torch only where the engine is, and a served agent that never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "midori_hf_nb"
MODULES = sorted(PACKAGE.rglob("*.py"))

#: the most lines a module may have, and a function
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100

#: where torch may be imported: the engine, the structured-output processor the engine runs, and the
#: test helper that builds tiny models
TORCH_ALLOWED = ("engine/", "structured/processor.py", "testing/models.py")
#: where transformers may be imported: as torch, plus the constraint library's tokenizer reader
TRANSFORMERS_ALLOWED = (*TORCH_ALLOWED, "structured/backend.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


NAMES = {module_name(path): path for path in MODULES}


def imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports anywhere (top level, under ``TYPE_CHECKING``, in a
    function): ``from package import name`` counts as the submodule ``package.name`` where that is
    a module, else as ``package`` itself."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in NAMES else module)
    return {name for name in found if name in NAMES and name != here}


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(path) for name, path in NAMES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_type_only_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .loaded import LoadedModel\n"
    tree_imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.level]
    assert [n.module for n in tree_imports] == ["loaded"]  # ast.walk sees the type-only import


def test_the_package_imports_form_no_cycle():
    graph = import_graph()
    assert graph["midori_hf_nb.engine.generation"]  # the graph is read (not empty by a bug)
    assert "midori_hf_nb.engine.loaded" in graph["midori_hf_nb.engine.shared_decode"]  # type-only edge counted
    assert cycles(graph) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_is_at_most_500_lines_and_each_function_at_most_100(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path}: {node.name} has {length} lines"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_across_modules(path):
    private = [f"{node.lineno}: {alias.name}" for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("midori_hf_nb"))
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == [], f"{path} imports private names: {private}"


def third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_engine_imports_torch_and_transformers(path):
    where = str(path.relative_to(PACKAGE))
    imports = third_party_imports(path)
    if not where.startswith(TORCH_ALLOWED):
        assert "torch" not in imports, f"{where} imports torch"
    if not where.startswith(TRANSFORMERS_ALLOWED):
        assert "transformers" not in imports, f"{where} imports transformers"
    if not where.startswith("notebook/"):
        assert not imports & {"IPython", "ipywidgets", "ipykernel"}, f"{where} imports the notebook layer's packages"


def test_the_import_checks_see_a_function_level_import():
    assert "torch" in third_party_imports(PACKAGE / "engine" / "capabilities" / "kernels.py")
    assert "transformers" in third_party_imports(PACKAGE / "engine" / "capabilities" / "docstrings.py")


#: a served agent, a described tool and a served call with tools, then what was imported
SERVED_SCRIPT = """
import asyncio, json, sys
from midori_hf_nb import OpenAICompatibleAgent, make_payload
from midori_hf_nb.tools import tool_schema

def add(a: int, b: int) -> int:
    '''Add two numbers.

    Args:
        a: the first
        b: the second
    '''
    return a + b

schema = tool_schema(add)
agent = OpenAICompatibleAgent(model=sys.argv[1], base_url=sys.argv[2], do_sample=False, max_new_tokens=8)
response = asyncio.run(agent.invoke_with_tools(make_payload("What is 2+3?"), tools=[add]))
print(json.dumps({"schema": schema["function"]["name"], "answered": isinstance(response.response, str),
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


@pytest.mark.slow  # the default model behind a real server
def test_a_served_agent_and_a_tool_schema_leave_torch_unloaded(served_server):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SERVED_SCRIPT), served_server.model,
                           served_server.base_url], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"schema": "add", "answered": True, "torch": False, "transformers": report["transformers"]}
