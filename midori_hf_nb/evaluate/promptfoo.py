"""Reading a promptfoo configuration (``promptfooconfig.yaml``): its prompts, tests and assertions.

Understood: ``description``; ``prompts`` (template texts, ``{raw, label|id}`` objects, and
``file://`` text files, split at lines of ``---`` as promptfoo does); ``tests`` (a list of
``{description, vars, assert, threshold}``, or ``file://`` CSV, JSON-lines or YAML files of them);
``defaultTest`` (``vars``, ``assert``, ``threshold`` and ``options.rubricPrompt``, merged into every
test as promptfoo merges them); and the assertion types of :data:`~.assertions.ASSERTION_TYPES`
with ``type``, ``value``, ``threshold``, ``weight``, ``metric`` and ``rubricPrompt``.

``providers`` are replaced by the ``models=`` (and ``judge=``) of :func:`~.run.evaluate`. Anything
else (other keys, other assertion types, ``transform``, per-assertion ``provider``, JavaScript
or Python given as text) is not run: each such part is listed in
:attr:`PromptfooSuite.not_understood` with where it is, and a warning says how many there are.
An assertion that is not understood is left out of its test, never counted as passed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..compare.columns import bounded_repr
from ..compare.loading import MAX_FILE_BYTES, read_bounded
from .assertions import ASSERTION_KEYS, Assertion, AssertionSpecError, assertion_from
from .items import TestItem, TestSetError, item_from, read_rows

#: top-level keys read; ``providers`` is replaced by ``models=``
TOP_KEYS = ("description", "prompts", "tests", "defaultTest", "providers")
TEST_KEYS = ("description", "vars", "assert", "threshold")
TEXT_PROMPT_SUFFIXES = (".txt", ".md", ".j2", ".prompt")


@dataclass
class PromptfooSuite:
    """What a promptfoo configuration holds, in this package's terms.

    ``prompts``: label -> template; ``items``: the tests (defaultTest merged in); ``providers``:
    the configured providers (not used: pass ``models=``); ``not_understood``: one line per part
    of the file that is not run, saying where it is and why; ``rubric_prompt``: defaultTest's
    ``options.rubricPrompt`` (the judge's template), when given.
    """

    path: Path
    description: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    items: list[TestItem] = field(default_factory=list)
    providers: list[Any] = field(default_factory=list)
    not_understood: list[str] = field(default_factory=list)
    rubric_prompt: str | None = None


class _Reader:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.base = path.parent
        self.max_bytes = max_bytes
        self.skipped: list[str] = []

    def skip(self, where: str, why: str) -> None:
        self.skipped.append(f"{where}: {why}")

    def file(self, ref: str, where: str) -> Path:
        target = Path(ref[len("file://"):])
        return target if target.is_absolute() else self.base / target

    def yaml(self, path: Path) -> Any:
        import yaml

        try:
            return yaml.safe_load(read_bounded(path, self.max_bytes))
        except yaml.YAMLError as exc:
            raise TestSetError(f"{path.name}: not YAML: {exc}") from None

    def prompts(self, value: Any) -> dict[str, str]:
        entries = value if isinstance(value, list) else [value]
        found: dict[str, str] = {}
        for i, entry in enumerate(entries):
            where = f"prompts[{i}]"
            if isinstance(entry, str) and entry.startswith("file://"):
                path = self.file(entry, where)
                if path.suffix.lower() not in TEXT_PROMPT_SUFFIXES:
                    self.skip(where, f"{entry!r}: only text prompt files ({', '.join(TEXT_PROMPT_SUFFIXES)}) are read")
                    continue
                parts = [p.strip() for p in read_bounded(path, self.max_bytes).split("\n---\n") if p.strip()]
                for j, part in enumerate(parts):
                    found[f"{path.name}" + (f" [{j + 1}]" if len(parts) > 1 else "")] = part
            elif isinstance(entry, str):
                found[f"prompt {i + 1}"] = entry
            elif isinstance(entry, Mapping) and isinstance(entry.get("raw"), str):
                extra = [k for k in entry if k not in ("raw", "label", "id")]
                if extra:
                    self.skip(where, f"keys {extra!r} are not understood (used: raw, label, id)")
                found[str(entry.get("label") or entry.get("id") or f"prompt {i + 1}")] = entry["raw"]
            else:
                self.skip(where, f"{bounded_repr(entry, 80)}: expected a template text, file://x.txt or {{raw, label}}")
        return found

    def assertion(self, spec: Any, where: str) -> Assertion | None:
        if isinstance(spec, Mapping):
            extra = [k for k in spec if k not in ASSERTION_KEYS]
            if extra:
                self.skip(where, f"keys {extra!r} are not understood, so the assertion is not run")
                return None
            if spec.get("type") in ("python", "not-python", "javascript", "not-javascript"):
                self.skip(where, f"type {spec.get('type')!r} given as code text is not run: pass the check "
                          "as a Python callable in asserts=")
                return None
        try:
            return assertion_from(spec, where)
        except AssertionSpecError as exc:
            self.skip(where, f"not run: {exc}")
            return None

    def asserts(self, value: Any, where: str) -> list[Assertion]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.skip(where, "expected a list of assertions")
            return []
        found = [self.assertion(spec, f"{where}[{i}]") for i, spec in enumerate(value)]
        return [a for a in found if a is not None]

    def test_entries(self, value: Any) -> list[tuple[str, Any]]:
        entries = value if isinstance(value, list) else [value]
        out: list[tuple[str, Any]] = []
        for i, entry in enumerate(entries):
            where = f"tests[{i}]"
            if isinstance(entry, str) and entry.startswith("file://"):
                path = self.file(entry, where)
                if path.suffix.lower() in (".yaml", ".yml"):
                    loaded = self.yaml(path)
                    rows = loaded if isinstance(loaded, list) else []
                    if not isinstance(loaded, list):
                        self.skip(where, f"{entry!r}: expected a YAML list of tests")
                else:
                    rows = read_rows(path, self.max_bytes)
                out.extend((f"{where} ({path.name} row {j + 1})", row) for j, row in enumerate(rows))
            elif isinstance(entry, Mapping):
                out.append((where, entry))
            else:
                self.skip(where, f"{bounded_repr(entry, 80)}: expected a test (a dict) or file://tests.csv")
        return out

    def test(self, where: str, entry: Mapping[str, Any], default: Mapping[str, Any], index: int) -> TestItem | None:
        if "vars" not in entry and any(k not in TEST_KEYS for k in entry):  # a CSV/JSONL row: columns are vars
            try:
                item = item_from({**entry, "id": entry.get("id", str(index))}, index)
            except (TestSetError, AssertionSpecError) as exc:
                self.skip(where, f"not run: {exc}")
                return None
            item.vars = {**default.get("vars", {}), **item.vars}
            item.asserts = item.asserts + self.asserts(default.get("assert"), "defaultTest.assert")
            return item
        extra = [k for k in entry if k not in TEST_KEYS]
        if extra:
            self.skip(where, f"keys {extra!r} are not understood (used: {', '.join(TEST_KEYS)})")
        variables = entry.get("vars") or {}
        if not isinstance(variables, Mapping):
            self.skip(where, "vars: expected a dict of variables; the test is not run")
            return None
        threshold = entry.get("threshold", default.get("threshold"))
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            self.skip(where, f"threshold={bounded_repr(threshold)}: expected a number; the test is not run")
            return None
        asserts = self.asserts(entry.get("assert"), f"{where}.assert") + \
            self.asserts(default.get("assert"), "defaultTest.assert")
        description = entry.get("description")
        return TestItem(id=str(index), vars={**(default.get("vars") or {}), **dict(variables)}, asserts=asserts,
                        description=None if description is None else str(description),
                        threshold=None if threshold is None else float(threshold))


def load_promptfoo(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, warn: bool = True) -> PromptfooSuite:
    """Read a promptfoo configuration file (see the module documentation); every part that is not
    understood is listed in ``not_understood`` (and, with ``warn``, counted in a warning)."""
    path = Path(path)
    reader = _Reader(path, max_bytes)
    config = reader.yaml(path)
    if not isinstance(config, Mapping):
        raise TestSetError(f"{path.name}: expected a YAML mapping with prompts and tests")
    for key in config:
        if key not in TOP_KEYS:
            reader.skip(str(key), "not understood (read: " + ", ".join(TOP_KEYS) + ")")
    suite = PromptfooSuite(path=path, description=config.get("description"))
    if config.get("prompts") is not None:
        suite.prompts = reader.prompts(config["prompts"])
    providers = config.get("providers")
    suite.providers = list(providers) if isinstance(providers, list) else ([] if providers is None else [providers])
    default = config.get("defaultTest") or {}
    if not isinstance(default, Mapping):
        reader.skip("defaultTest", "expected a mapping")
        default = {}
    for key in default:
        if key not in ("vars", "assert", "threshold", "options"):
            reader.skip(f"defaultTest.{key}", "not understood (read: vars, assert, threshold, options.rubricPrompt)")
    options = default.get("options") or {}
    if isinstance(options, Mapping):
        for key in options:
            if key != "rubricPrompt":
                reader.skip(f"defaultTest.options.{key}", "not understood (read: rubricPrompt)")
        rubric = options.get("rubricPrompt")
        suite.rubric_prompt = rubric if isinstance(rubric, str) else None
    items = []
    for where, entry in reader.test_entries(config.get("tests") or []):
        item = reader.test(where, entry, default, len(items))
        if item is not None:
            items.append(item)
    suite.items = items
    suite.not_understood = reader.skipped
    if warn and reader.skipped:
        warnings.warn(f"{path.name}: {len(reader.skipped)} part(s) not understood and not run (see "
                      f"suite.not_understood): {reader.skipped[0]}" + (" ..." if len(reader.skipped) > 1 else ""),
                      UserWarning, stacklevel=2)
    return suite


__all__ = ["PromptfooSuite", "TOP_KEYS", "load_promptfoo"]
