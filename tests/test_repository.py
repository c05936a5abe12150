"""Repository hygiene: README commands, CI entry, notebooks present and stripped of outputs."""

from __future__ import annotations

import re

import nbformat
import pytest

from .conftest import ROOT

NOTEBOOKS = ["01_quickstart", "02_tools_and_thinking", "03_chat_panel", "04_prompt_comparison", "05_magics",
             "06_models_and_memory", "07_served_models", "08_structured_output", "09_evaluation"]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.DOTALL).group(1)
    return [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < text.index("\n## ")  # before any section
    assert readme_commands() == ["make setup", "make test"]
    assert "python -m midori_hf_nb" in text  # the main job is named


def test_ci_runs_the_readme_commands():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in readme_commands():
        assert command in lines


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_exists_and_is_stripped(name):
    path = ROOT / "notebooks" / f"{name}.ipynb"
    assert path.is_file(), f"{path} is missing"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell has committed outputs (strip them)"
        assert cell.execution_count is None, f"{name}: a cell has an execution count (strip it)"
    assert any(line.lstrip().startswith("assert ") for cell in code for line in cell.source.splitlines()), \
        f"{name}: no cell checks its own results"
    assert nb.cells[0].cell_type == "markdown", f"{name}: starts without a narrative"


def test_every_notebook_is_listed_in_the_readme():
    text = (ROOT / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"`{name}`" in text
