"""A chat panel survives its kernel, in a real browser (JupyterLab and headless Chromium, as in
``test_browser.py``).

A notebook shows a :class:`~midori_hf_nb.notebook.ChatPanel` and sends a message; while the kernel
runs, the panel shows and its saved copy is hidden. The notebook is saved, its kernel shut down,
and the notebook opened again in a new page: where the panel was, the conversation's text shows
(the saved copy) instead of "Error displaying widget" (screenshot
``tests/artifacts/chat_panel_reopened.png``, kept in ``docs/``).
Then the kernel is restarted and a new panel continues the conversation by the id the saved copy
names: it shows the earlier messages, and the next answer is sent with them as memory.

Scripted agents answer (what is checked is the panel and the notebook, not a model). The kernel
records to a call log of this test's own.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import nbformat
import pytest

from .conftest import log_rows
from .test_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, jupyter_lab  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
FOLLOW_UP = "Which river runs through it?"

SETUP = f"""\
from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.testing import ScriptedAgent

panel = ChatPanel(ScriptedAgent({ANSWER!r}), conversation="browser trip")
panel
"""
SEND = f"_ = await panel.send({QUESTION!r})"
PLACEHOLDER = "# the conversation continues here"
RESUME = """from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.testing import ScriptedAgent
agent = ScriptedAgent("The Seine.")
resumed = ChatPanel(agent, conversation="{cid}")
resumed"""

IDLE = re.compile(r"Python 3 \(ipykernel\) \| Idle")


@pytest.fixture
def own_log(tmp_path, monkeypatch):
    """The kernels of this test record to a log of their own (set before the server starts)."""
    path = tmp_path / "browser-log" / "logs.db"
    monkeypatch.setenv("MIDORI_HF_NB_LOG", str(path))
    return path


def api(base: str, method: str, path: str) -> object:
    request = urllib.request.Request(f"{base}{path}?token={TOKEN}", method=method)
    with urllib.request.urlopen(request, timeout=60) as reply:
        body = reply.read()
    return json.loads(body) if body else None


def run_cell(page, index: int) -> None:
    page.locator(".jp-NotebookPanel .jp-Cell .cm-content").nth(index).click()
    page.keyboard.press("Shift+Enter")


def test_a_saved_panel_shows_its_conversation_without_a_kernel_and_resumes_by_id(own_log, jupyter_lab, artifacts_dir):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    base, _, root = jupyter_lab
    notebook = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(SEND),
                      nbformat.v4.new_code_cell(PLACEHOLDER)]
    path = root / "reopen.ipynb"
    nbformat.write(notebook, path)
    url = f"{base}/lab/tree/{path.name}?token={TOKEN}&reset"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content")
            expect(page.get_by_role("button", name=IDLE)).to_be_visible(timeout=120_000)
            run_cell(page, 0)
            output = page.locator(".jp-NotebookPanel .jp-OutputArea").first
            expect(output.locator('textarea[placeholder^="Message"]')).to_be_visible()
            run_cell(page, 1)
            expect(output.locator(".midori-chat-assistant .midori-answer").first).to_contain_text(ANSWER)
            # while the kernel runs: the live panel shows, its saved copy is hidden (and kept current)
            copy = output.locator(".midori-chat-static")
            expect(copy).to_have_count(1)
            expect(copy).to_be_hidden()
            expect(copy).to_contain_text(ANSWER)  # in the DOM, up to date, not shown
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 60
            while "midori-chat-static" not in path.read_text() or ANSWER not in path.read_text():
                assert time.monotonic() < deadline, "the notebook was not saved with its outputs"
                time.sleep(0.5)
            for session in api(base, "GET", "/api/sessions"):
                api(base, "DELETE", f"/api/kernels/{session['kernel']['id']}")  # the kernel is gone
            page.close()

            # the notebook opened again: the conversation where the panel was, not an error
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content")
            output = page.locator(".jp-NotebookPanel .jp-OutputArea").first
            copy = output.locator(".midori-chat-static")
            expect(copy).to_be_visible()
            expect(copy).to_contain_text(QUESTION)
            expect(copy).to_contain_text(ANSWER)
            expect(page.get_by_role("button", name=IDLE)).to_be_visible(timeout=120_000)  # a new kernel, no panel
            expect(output.get_by_text("Error displaying widget")).to_be_hidden()
            expect(output.get_by_text("Loading widget")).to_be_hidden()
            expect(output.locator('textarea[placeholder^="Message"]')).to_have_count(0)  # no live panel
            note = copy.inner_text()
            cid = copy.get_attribute("data-conversation")
            assert cid and f'ChatPanel(agent, conversation="{cid}")' in note and "browser trip" in note
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_panel_reopened.png"))

            # a restarted kernel continues the conversation by its id
            for session in api(base, "GET", "/api/sessions"):
                api(base, "POST", f"/api/kernels/{session['kernel']['id']}/restart")
            expect(page.get_by_role("button", name=IDLE)).to_be_visible(timeout=120_000)
            page.locator(".jp-NotebookPanel .jp-Cell .cm-content").nth(2).click()
            page.keyboard.press("Control+a")
            page.keyboard.insert_text(RESUME.format(cid=cid))
            page.keyboard.press("Shift+Enter")
            resumed = page.locator(".jp-NotebookPanel .jp-Cell").nth(2).locator(".jp-OutputArea")
            box = resumed.locator('textarea[placeholder^="Message"]')
            expect(box).to_be_visible()
            expect(resumed.locator(".midori-chat-status")).to_contain_text("continuing conversation browser trip")
            expect(resumed.locator(".midori-chat-user .midori-chat-text").first).to_have_text(QUESTION)
            box.fill(FOLLOW_UP)
            resumed.locator("button.jupyter-button", has_text=re.compile(r"^\s*Send\s*$")).click()
            expect(resumed.locator(".midori-chat-assistant .midori-answer").last).to_contain_text("The Seine.")
            resumed.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_panel_resumed.png"))
        finally:
            browser.close()
    rows = log_rows(own_log, "conversation_id = ?", (cid,))
    assert [r["prompt"] for r in rows] == [QUESTION, FOLLOW_UP]
    memory = json.loads(rows[-1]["prompt_json"])["memory"]
    assert [(m["role"], m["content"]) for m in memory] == [("user", QUESTION), ("assistant", ANSWER)]
    assert rows[0]["notebook"].endswith("reopen.ipynb") and rows[0]["cell_id"]  # where the panel was created
    assert {r["surface"] for r in rows} == {"chat_panel"}
