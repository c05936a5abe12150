"""Every test can fail: read from the test files' syntax trees, each test function asserts something.

A test passes this check when its body (or a function it calls that is defined in the same file,
in ``conftest.py`` or in another module of ``tests/``, followed through further calls) contains an
``assert`` statement, ``pytest.raises``/``pytest.warns``/``pytest.fail``, an assertion function of
a library (a call named ``assert_*``, ``assertEqual``...) or playwright's ``expect(...)``. Nested
functions count only where the test calls them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
#: ``pytest.<name>`` calls that fail the test by themselves.
PYTEST_CHECKS = {"raises", "warns", "fail", "deprecated_call"}
#: Calls that are assertions of a library (playwright's web-first assertions).
ASSERTING_CALLS = {"expect"}


@dataclass
class Module:
    """The functions of one test module and the names it imports from other modules of ``tests/``."""

    name: str
    functions: dict[str, ast.AST] = field(default_factory=dict)
    imported: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    modules: dict[str, str] = field(default_factory=dict)  # local name -> module of tests/


def _read(path: Path) -> tuple[Module, ast.Module]:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = Module(path.stem)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            module.functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    module.functions[f"{node.name}.{item.name}"] = item
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                if node.module:
                    module.imported[alias.asname or alias.name] = (node.module, alias.name)
                else:  # from . import markup
                    module.modules[alias.asname or alias.name] = alias.name
    return module, tree


def load_modules() -> dict[str, Module]:
    return {path.stem: _read(path)[0] for path in sorted(TESTS.glob("*.py"))}


def _is_check(node: ast.AST) -> bool:
    """An assertion written in place (not through a helper of the test suite)."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id == "pytest" and func.attr in PYTEST_CHECKS:
                return True
            return func.attr.startswith(("assert_", "assert")) and func.attr != "assert"
        if isinstance(func, ast.Name):
            return func.id in ASSERTING_CALLS or func.id.startswith("assert_")
    return False


def _own_nodes(function: ast.AST):
    """The nodes of ``function``'s body, not descending into nested functions, lambdas or classes."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


class Checker:
    """Whether a function asserts, itself or through the suite's helpers it calls."""

    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self.memo: dict[int, bool] = {}

    def _resolve(self, call: ast.Call, module: Module, nested: dict[str, ast.AST]):
        func = call.func
        if isinstance(func, ast.Name):
            if func.id in nested:
                return nested[func.id], module
            if func.id in module.functions:
                return module.functions[func.id], module
            if func.id in module.imported:
                source, name = module.imported[func.id]
                other = self.modules.get(source)
                if other is not None and name in other.functions:
                    return other.functions[name], other
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            source = module.modules.get(func.value.id)
            other = self.modules.get(source) if source else None
            if other is not None and func.attr in other.functions:
                return other.functions[func.attr], other
        return None, None

    def asserts(self, function: ast.AST, module: Module) -> bool:
        key = id(function)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = False  # a recursive helper does not assert through itself
        nodes = list(_own_nodes(function))
        nested = {n.name: n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        result = any(_is_check(n) for n in nodes)
        if not result:
            for node in nodes:
                if isinstance(node, ast.Call):
                    target, owner = self._resolve(node, module, nested)
                    if target is not None and self.asserts(target, owner):
                        result = True
                        break
        self.memo[key] = result
        return result


def unchecked_tests() -> list[str]:
    modules = load_modules()
    checker = Checker(modules)
    missing = []
    for path in sorted(TESTS.glob("test_*.py")):
        module = modules[path.stem]
        for name, function in module.functions.items():
            short = name.rpartition(".")[2]
            in_class = "." in name
            if not short.startswith("test") or (in_class and not name.startswith("Test")):
                continue
            if not checker.asserts(function, module):
                missing.append(f"{path.name}::{name} (line {function.lineno})")
    return missing


def test_every_test_function_asserts_something():
    missing = unchecked_tests()
    assert not missing, "tests that cannot fail (no assert, no pytest.raises/warns, no helper that asserts):\n" + \
        "\n".join(missing)


# --------------------------------------------------------------------------- the check itself can fail

SAMPLE = '''
import pytest
from .markup import assert_inert_html

def helper_that_asserts(x):
    assert x

def helper_that_prints(x):
    print(x)

def test_asserts():
    assert 1

def test_raises():
    with pytest.raises(ValueError):
        int("x")

def test_through_a_helper():
    helper_that_asserts(1)

def test_through_an_imported_helper():
    assert_inert_html("<p>")

def test_through_a_nested_function_it_calls():
    def inner():
        assert True
    inner()

def test_prints_only():
    helper_that_prints(1)

def test_nested_assert_never_called():
    def inner():
        assert True

def test_skips_only():
    pytest.skip("not here")
'''


@pytest.mark.parametrize("name, asserts", [
    ("test_asserts", True), ("test_raises", True), ("test_through_a_helper", True),
    ("test_through_an_imported_helper", True), ("test_through_a_nested_function_it_calls", True),
    ("test_prints_only", False), ("test_nested_assert_never_called", False), ("test_skips_only", False),
])
def test_the_check_tells_tests_that_assert_from_tests_that_cannot_fail(tmp_path, name, asserts):
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    modules = load_modules()
    module, _ = _read(sample)
    modules[module.name] = module
    assert Checker(modules).asserts(module.functions[name], module) is asserts
