"""What the example notebooks leave in their outputs once executed: no stderr boxes, no progress bar
stopped part way, no line about a load stage that did not run.

Each notebook is executed once per test session (``nbclient``, the kernel importing this checkout)
into a temporary folder, or, when ``MIDORI_HF_NB_EXECUTED_NOTEBOOKS`` names a folder, read from there:
``make test`` executes the notebooks with ``pytest --nbmake --overwrite`` on a copy in
``build/notebooks`` and points this test at it, so they run once. The checks themselves
(:func:`output_problems`) are tested on hand-made outputs first, so they can fail.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: A text progress bar (tqdm's format): "Loading x:  67%|██████▋   | 2/3 [00:01<00:00]".
BAR = re.compile(r"(\d{1,3})%\|[^|\n]*\|\s*(\d+)/(\d+)")
#: A line a load prints about a stage that runs only the first time (a cache that exists skips it).
FIRST_USE = "first use only"


def output_text(output: dict) -> str:
    """The text of one notebook output (a stream's text, or the plain and HTML forms of a display)."""
    if output.get("output_type") == "stream":
        return "".join(output.get("text", ""))
    data = output.get("data", {})
    return "\n".join("".join(data[kind]) for kind in ("text/plain", "text/html") if kind in data)


def shown_outputs(outputs: list[dict]) -> list[dict]:
    """The outputs as a front end shows them: consecutive stream outputs of one name joined into one."""
    shown: list[dict] = []
    for output in outputs:
        last = shown[-1] if shown else None
        if output.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream" \
                and last.get("name") == output.get("name"):
            shown[-1] = {**last, "text": output_text(last) + output_text(output)}
        else:
            shown.append(output)
    return shown


def visible_lines(text: str) -> list[str]:
    """The lines a terminal or a notebook shows for ``text``: a carriage return starts its line over."""
    return [line.split("\r")[-1] if line.split("\r")[-1].strip() else line.replace("\r", "")
            for line in text.split("\n")]


def output_problems(notebook: dict, *, caches_exist: bool = True) -> list[str]:
    """What is wrong with a notebook's outputs: stderr streams, a progress bar shown short of its
    total, and (when ``caches_exist``) a "first use only" stage line. Each problem names the cell."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        outputs = cell.get("outputs", []) if cell.get("cell_type") == "code" else []
        for output in shown_outputs(outputs):
            text = output_text(output)
            where = f"cell {index} ({cell.get('source', '')[:40]!r})"
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                problems.append(f"{where}: stderr output {text[:300]!r}")
            for line in visible_lines(text):
                for percent, done, total in BAR.findall(line):
                    if int(percent) < 100 or int(done) < int(total):
                        problems.append(f"{where}: a progress bar left at {percent}% {done}/{total}")
            if caches_exist and FIRST_USE in text:
                problems.append(f"{where}: a first-use stage printed although the cache exists: {text[:200]!r}")
    return problems


def test_the_checks_find_stderr_a_stuck_bar_and_a_stage_that_did_not_run():
    notebook = {"cells": [
        {"cell_type": "code", "source": "agent.invoke()", "outputs": [
            {"output_type": "stream", "name": "stderr",
             "text": "Loading offline:smollm2:  67%|██████▋   | 2/3 [00:01<00:00,  1.5step/s]"}]},
        {"cell_type": "code", "source": "print()", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "weights:  40%|████      | 4/10 [00:02<00:03]"}]},
        {"cell_type": "code", "source": "x", "outputs": [
            {"output_type": "display_data", "data": {"text/plain": "loading · converting GGUF (first use only)"}}]},
        {"cell_type": "code", "source": "ok", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "\rdone:  33%|███▎      | 1/3 [00:00<00:01]"},
            {"output_type": "stream", "name": "stdout", "text": "\rdone: 100%|██████████| 3/3 [00:01<00:00]\n"},
            {"output_type": "execute_result", "data": {"text/plain": "'The capital of France is Paris.'"}}]},
    ]}
    problems = output_problems(notebook)
    assert len(problems) == 4, problems  # stderr, its stuck bar, the stdout bar at 40%, the stage line
    assert shown_outputs(notebook["cells"][3]["outputs"])[0]["text"].endswith("3/3 [00:01<00:00]\n")
    assert problems[0].startswith("cell 0") and "stderr" in problems[0] and "67% 2/3" in problems[1]
    assert "40% 4/10" in problems[2] and FIRST_USE in problems[3] and "cell 3" not in " ".join(problems)
    assert output_problems(notebook, caches_exist=False)[-1].startswith("cell 1")


@pytest.fixture(scope="session")
def executed_notebooks(tmp_path_factory, default_model_dir):
    """Notebook name -> executed notebook (dict), executing each on first request."""
    import nbformat

    given = os.environ.get("MIDORI_HF_NB_EXECUTED_NOTEBOOKS")
    folder = Path(given) if given else tmp_path_factory.mktemp("executed-notebooks")
    cache: dict[str, dict] = {}

    def get(path: Path) -> dict:
        if path.name not in cache:
            target = folder / path.name
            if not given:
                from nbclient import NotebookClient

                shutil.copy(path, target)
                notebook = nbformat.read(target, as_version=4)
                NotebookClient(notebook, timeout=300, kernel_name="python3",
                               resources={"metadata": {"path": str(folder)}}).execute()
                nbformat.write(notebook, target)
            elif not target.is_file():
                pytest.fail(f"MIDORI_HF_NB_EXECUTED_NOTEBOOKS={given}: {path.name} is not there (run the notebooks "
                            "with pytest --nbmake --overwrite on a copy in that folder first)")
            cache[path.name] = nbformat.read(target, as_version=4)
        return cache[path.name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_an_executed_notebook_shows_no_stderr_and_no_stuck_progress_bar(executed_notebooks, path):
    notebook = executed_notebooks(path)
    assert any(cell.get("outputs") for cell in notebook.cells), f"{path.name} was not executed"
    assert output_problems(notebook) == []
