"""The chat panel in a real browser: JupyterLab on 127.0.0.1, driven by headless Chromium through playwright.

Two notebooks: ``chat.ipynb`` runs the panel on the offline default model (:func:`test_chat_panel_in_jupyterlab`),
``scripted.ipynb`` on a scripted agent whose answers are known in advance
(:func:`test_answers_you_can_use_in_jupyterlab`: unfenced code, Copy, As text, typing during an answer, Esc,
edit and resend). Screenshots of both go to ``tests/artifacts``; the ones the README shows are copied to
``docs/``.

The test writes a notebook into a temporary folder, starts JupyterLab on a free port with a
token (temporary config, runtime and data folders; the news pop-up disabled), opens the
notebook in Debian's ``/usr/bin/chromium`` (never a downloaded browser), runs the cell that
shows a :class:`~midori_hf_nb.notebook.ChatPanel` on the offline default model, types a
question at an ordinary typing speed while another cell keeps the kernel busy, presses Send and
checks that exactly the typed text was sent (shown as queued meanwhile) and that the answer
streams into the page; then presses Clear, checks that Shift+Enter makes a new line,
sends a long request with Enter, presses Stop and checks that the panel shows the answer as stopped.
Screenshots go to ``tests/artifacts/chat_send_under_load.png`` (the queued message),
``tests/artifacts/chat_panel_answer.png`` (the streamed answer) and
``tests/artifacts/chat_panel.png`` (the stopped answer); a last request for code checks that the
answer renders as Markdown with highlighted code (``tests/artifacts/chat_markdown_answer.png``). The server and its kernels are stopped
at the end, whatever happened.

Skipped (with a message) only where Chromium is not installed: ``make browser`` installs it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from .test_notebook_unfenced import CODE, MANGLED

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "midori-browser-test-token"
QUESTION = "What is the capital of France?"
#: Answered by the default model (greedy) with about 390 tokens (about 16 s here): still running when
#: Stop is pressed. ("Count from 1 to 500, one number per line." ends by itself after 20 numbers, about
#: 5 s, and a Stop pressed after the follow-up was typed then stopped the follow-up's answer instead.)
LONG_REQUEST = "Write a very long story about a dragon and a knight, in at least 1000 words."
#: True once the live answer view shows at least 40 characters of the answer.
LIVE_ANSWER_STARTED = """() => [...document.querySelectorAll('.midori-stream .midori-answer')].some(
    (el) => el.textContent.replace('▌', '').trim().length >= 40)"""
#: Typed while the long answer is written (queued, then answered after Stop).
FOLLOW_UP = "What is 2 + 2?"
#: Answered by the default model (greedy) with a fenced Python block.
CODE_REQUEST = "Write a Python function that adds two numbers."

#: The answers of the scripted panel, in order: code the model left unfenced, a long story, the answer to the
#: message queued while the story is written, and the answer to an edited message.
SCRIPTED_CELL = f"""\
from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.testing import ScriptedAgent

MANGLED = {MANGLED!r}
STORY = "Once upon a time there was a very long story that went on and on. " * 40
scripted = ScriptedAgent([MANGLED, STORY, "A short one: the end.", "Edited: here is another way.", STORY,
                          '{{"name": "Paris"}}'], delay=0.03, piece_chars=3)
panel = ChatPanel(scripted, throttle=0.05)
panel
"""

#: Sent while the long answer is written, with real key presses.
TYPED_DURING_ANSWER = "And now a short one, please."

SETUP_CELL = """\
from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent
from midori_hf_nb.notebook import ChatPanel

agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL)  # progress on, as by default: nothing may reach stderr
panel = ChatPanel(agent, system_prompt="You are a helpful assistant.", greedy=True, max_new_tokens=600)
panel
"""

#: A cell that keeps the kernel busy while the user types into the panel.
SLOW_CELL = "import time; time.sleep(6)"

#: Milliseconds between two key presses: a person typing at an ordinary speed.
TYPING_DELAY_MS = 60

#: Installed on the output area: records the text of the live answer view and of the status line
#: at every DOM change.
RECORD_LIVE_TEXT = """(root) => {
    window.midoriLiveTexts = [];
    window.midoriStatusTexts = [];
    window.midoriLiveLabels = [];
    new MutationObserver(() => {
        root.querySelectorAll('.midori-chat-live').forEach(
            (el) => window.midoriLiveLabels.push(el.firstElementChild ? el.firstElementChild.textContent : ''));
        root.querySelectorAll('.midori-stream .midori-answer').forEach(
            (el) => window.midoriLiveTexts.push(el.textContent));
        root.querySelectorAll('.midori-chat-status').forEach(
            (el) => window.midoriStatusTexts.push(el.textContent));
    }).observe(root, {subtree: true, childList: true, characterData: true});
}"""

#: Rendered styles of the panel's buttons: (opacity, background colour, text).
BUTTON_STYLE = "e => [getComputedStyle(e).opacity, getComputedStyle(e).backgroundColor, e.textContent.trim()]"

#: True once the panel's status line shows the model loading.
STATUS_LOADING = """() => [...document.querySelectorAll('.midori-chat-status')].some(
    (el) => el.textContent.includes('loading model…'))"""


#: At most this many tokens may follow the count the page showed when Stop was pressed (the page
#: refreshes at most every 0.1 s and the click crosses the websocket: a handful of tokens).
STOP_TOKENS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(folder: Path, name: str = "chat.ipynb", cells: tuple[str, ...] = (SETUP_CELL, SLOW_CELL)) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(cell) for cell in cells]
    path = folder / name
    nbformat.write(notebook, path)
    return path


def stop_process_tree(proc: subprocess.Popen) -> None:
    """Stop the server, its process group and every child it started (kernels run in their own sessions)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server serving a fresh notebook; yields ``(base_url, notebook_name)``."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: run `make browser` (Debian packages chromium "
                    "and chromium-driver) to run the real-browser test")
    root = tmp_path / "root"
    root.mkdir()
    notebook = write_notebook(root)
    write_notebook(root, "scripted.ipynb", (SCRIPTED_CELL,))
    env = dict(os.environ)
    for name, folder in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")):
        env[name] = str(tmp_path / folder)
        (tmp_path / folder).mkdir()
    settings = tmp_path / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env["TOKENIZERS_PARALLELISM"] = "false"
    # the kernel imports this checkout's package (not whichever copy is installed in the environment)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    log = open(tmp_path / "jupyter.log", "wb")
    proc = None
    try:
        for _attempt in range(3):  # a port taken between choosing and binding: choose another
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
                 "--port", str(port), "--ServerApp.port_retries=0", f"--ServerApp.token={TOKEN}",
                 f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            if proc.poll() is None and time.monotonic() < deadline:
                break
            stop_process_tree(proc)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "jupyter.log").read_text(errors="replace")[-3000:])
        yield base, notebook.name, root
    finally:
        if proc is not None:
            stop_process_tree(proc)
        log.close()


IDLE = re.compile(r"Python 3 \(ipykernel\) \| Idle")


def open_panel(page, base: str, name: str):
    """Open notebook ``name``, run its first cell (the panel) and return (output area, input box, button finder)."""
    from playwright.sync_api import expect

    page.set_default_timeout(120_000)
    page.goto(f"{base}/lab/tree/{name}?token={TOKEN}&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content")
    expect(page.get_by_role("button", name=IDLE)).to_be_visible(timeout=120_000)
    page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")
    # the panel's own output (the saved copy of its conversation follows it, hidden while it runs)
    output = page.locator(".jp-NotebookPanel .jp-OutputArea").first.locator(".jp-OutputArea-child").first
    box = output.locator('textarea[placeholder^="Message"]')
    expect(box).to_be_visible(timeout=120_000)

    def button(label: str):
        return output.locator("button.jupyter-button", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))

    return output, box, button


def launch(playwright):
    """Debian's Chromium, and a page whose clipboard the test may read (what Copy wrote)."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1100},
                                  permissions=["clipboard-read", "clipboard-write"])
    return browser, context.new_page()


def clipboard(page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


@pytest.mark.slow  # the notebook's kernel loads the offline default model
def test_chat_panel_in_jupyterlab(jupyter_lab, artifacts_dir):
    from playwright.sync_api import expect, sync_playwright

    base, name, root = jupyter_lab
    with sync_playwright() as playwright:
        browser, page = launch(playwright)
        try:
            output, box, button = open_panel(page, base, name)

            # 1. Send under load: another cell keeps the kernel busy while the question is typed at an
            # ordinary speed and Send is clicked; the message sent is exactly the text in the box.
            # A MutationObserver records every text the live (streaming) view shows, so no state is missed.
            output.evaluate(RECORD_LIVE_TEXT)
            expect(page.get_by_role("button", name=IDLE)).to_be_visible()
            # idle: Stop is neither enabled nor coloured, Send is dimmed while the box is empty
            stop_idle = button("Stop").evaluate(BUTTON_STYLE)
            send_idle = output.locator(".midori-composer-send").evaluate(BUTTON_STYLE)
            assert button("Stop").is_disabled() and float(stop_idle[0]) < 1, stop_idle
            assert output.locator(".midori-composer-send").is_disabled() and float(send_idle[0]) < 0.6, send_idle
            page.locator(".jp-NotebookPanel .jp-Cell .cm-content").nth(1).click()
            page.keyboard.press("Shift+Enter")  # time.sleep(6)
            expect(page.get_by_role("button", name=re.compile(r"Python 3 \(ipykernel\) \| Busy"))).to_be_visible()
            box.click()
            box.press_sequentially(QUESTION, delay=TYPING_DELAY_MS)
            button("Send").click()
            assert box.input_value() == ""  # cleared on the click, not when the kernel gets to it
            queued = output.locator(".midori-composer-queued")
            expect(queued).to_contain_text(QUESTION)  # shown as queued while the kernel is busy
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_send_under_load.png"))
            expect(queued).to_have_count(0, timeout=60_000)
            # 2. the model loads on first use: the status line ticks "loading model… N s" with its stage,
            # above the streamed answer too; nothing of the load goes to the notebook's stderr
            page.wait_for_function(STATUS_LOADING, timeout=60_000, polling=50)
            page.screenshot(path=str(artifacts_dir / "chat_loading.png"))
            live = output.locator(".midori-stream .midori-answer")  # the answer being written
            answers = output.locator(".midori-chat-assistant .midori-answer")  # the answers recorded
            expect(answers.first).to_be_visible(timeout=300_000)
            sent = output.locator(".midori-chat-user .midori-chat-text").first.inner_text()
            assert sent == QUESTION, f"the panel sent {sent!r}; the box held {QUESTION!r}"
            assert box.input_value() == ""
            final = answers.first.inner_text()
            assert "Paris" in final
            seen = page.evaluate("window.midoriLiveTexts")
            partial_views = [t[:-1] for t in seen if t.endswith("▌") and t[:-1].strip()]
            assert partial_views, f"no partial answer was shown while the answer streamed: {seen!r}"
            # the views render Markdown: compare the text with whitespace collapsed (textContent keeps the
            # source's line breaks between blocks, inner_text shows blank lines)
            flat = " ".join(final.split())
            assert all(flat.startswith(" ".join(p.split())) for p in partial_views), (partial_views, final)
            expect(output.locator(".midori-chat-status")).to_contain_text("done")
            statuses = page.evaluate("window.midoriStatusTexts")
            loading = sorted({t.split(" · ")[0] for t in statuses if t.startswith("loading model…")})
            assert len(loading) >= 2, f"the loading status did not tick: {statuses!r}"
            assert not [t for t in statuses if "first use only" in t], statuses  # the caches exist: no such stage
            assert "Assistant" in page.evaluate("window.midoriLiveLabels")  # labelled while it streamed
            assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0  # no stderr box
            assert output.locator(".midori-chat-time").count() == 2  # when it was sent, when the answer ended
            button("Export").click()
            expect(output.locator(".midori-chat-info")).to_contain_text(".json")
            exported = sorted(p.suffix for p in root.glob("chat-*"))
            assert exported == [".json", ".md"], exported  # next to the notebook
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_panel_answer.png"))

            # 3. Clear, then a long request sent with Enter; a message typed meanwhile is queued (not glued,
            # not lost); Stop ends the long answer and the queued message is answered next
            button("Clear").click()
            expect(output.locator(".midori-chat-empty")).to_be_visible()
            box.fill("line one")
            box.press("Shift+Enter")  # a new line, not a send
            box.press_sequentially("line two")
            assert box.input_value() == "line one\nline two" and output.locator(".midori-chat-user").count() == 0
            box.fill(LONG_REQUEST)
            box.press("End")
            box.press("Enter")
            expect(button("Stop")).to_be_enabled()
            page.wait_for_function(LIVE_ANSWER_STARTED, timeout=300_000, polling=50)
            stop_running = button("Stop").evaluate(BUTTON_STYLE)
            assert stop_running[1] != stop_idle[1] and float(stop_running[0]) == 1, (stop_running, stop_idle)
            box.press_sequentially(FOLLOW_UP, delay=TYPING_DELAY_MS)  # typed while the answer is written
            expect(output.locator(".midori-composer-send")).to_have_text("Queue")
            box.press("Enter")
            expect(output.locator(".midori-chat-queued")).to_contain_text(FOLLOW_UP)
            assert box.input_value() == ""
            # what the page showed when Stop was pressed: the live view (no answer is recorded yet, and
            # waiting for one would wait for the long answer's end)
            shown_at_stop = live.first.inner_text().replace("▌", "")
            assert output.locator(".midori-chat-assistant").count() == 0
            button("Stop").click()
            expect(output.locator(".midori-chat-stopped")).to_be_visible(timeout=60_000)
            users = output.locator(".midori-chat-user .midori-chat-text")
            expect(users).to_have_count(2, timeout=60_000)  # the queued message went out after the stop
            assert users.all_inner_texts() == [LONG_REQUEST, FOLLOW_UP]
            expect(output.locator(".midori-chat-queued")).to_have_count(0)
            expect(output.locator(".midori-chat-assistant")).to_have_count(2, timeout=300_000)
            expect(output.locator(".midori-chat-status")).to_contain_text("done", timeout=300_000)
            expect(button("Stop")).to_be_disabled()
            assert box.input_value() == ""
            stopped = answers.first.inner_text()
            assert len(stopped.strip()) >= 40
            assert "cancelled" in output.locator(".midori-chat-assistant").first.inner_text()
            page.wait_for_timeout(1500)
            assert answers.first.inner_text() == stopped  # nothing more arrives after Stop
            # Stop cut the answer short, within a few tokens of what the page showed when it was pressed
            # (the page lags the kernel by a refresh or two): far from the 600 tokens asked for
            shown_words, stopped_words = len(shown_at_stop.split()), len(stopped.split())
            assert shown_words <= stopped_words <= shown_words + STOP_TOKENS, (shown_words, stopped_words)

            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_panel.png"))

            # 4. a Markdown answer: the model's fenced code shows as a highlighted code block, no fences,
            # with a Copy button that puts the code on the clipboard
            button("Clear").click()
            box.fill(CODE_REQUEST)
            box.press("Enter")
            code = answers.first.locator("pre.midori-code code")
            expect(code.first).to_be_visible(timeout=300_000)
            expect(output.locator(".midori-chat-status")).to_contain_text("done", timeout=300_000)
            assert "def " in code.first.inner_text() and "return" in code.first.inner_text()
            keyword = code.first.locator("span.k", has_text="def").first
            colour = keyword.evaluate("e => getComputedStyle(e).color")
            plain = code.first.evaluate("e => getComputedStyle(e).color")
            assert colour != plain, f"the keyword is not highlighted: {colour} against {plain}"
            assert "```" not in answers.first.inner_text()
            output.locator(".midori-copy-code").first.click()
            expect(output.locator(".midori-copy-code").first).to_have_text("Copied")
            assert clipboard(page) == code.first.evaluate("e => e.textContent")
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_markdown_answer.png"))
        finally:
            browser.close()


def test_answers_you_can_use_in_jupyterlab(jupyter_lab, artifacts_dir):
    """Unfenced code, Copy, As text, typing during an answer, Esc (the panel's only while it has the focus), edit
    and resend: on a scripted agent, so every answer is known (the panel's own behaviour in a real browser,
    with real key presses)."""
    from playwright.sync_api import expect, sync_playwright

    base, _, _ = jupyter_lab
    with sync_playwright() as playwright:
        browser, page = launch(playwright)
        try:
            output, box, button = open_panel(page, base, "scripted.ipynb")
            answers = output.locator(".midori-chat-assistant")
            status = output.locator(".midori-chat-status")

            # 1. code the model left unfenced: one monospaced block, lines and indentation kept, no heading
            box.click()
            box.press_sequentially("Write a function that reverses a string.", delay=20)
            box.press("Enter")
            expect(status).to_contain_text("done", timeout=60_000)
            pre = answers.first.locator("pre.midori-code")
            expect(pre).to_have_count(1)
            assert pre.evaluate("e => e.textContent") == CODE + "\n"
            assert "mono" in pre.evaluate("e => getComputedStyle(e).fontFamily").lower()
            assert answers.first.locator("h1").count() == 0
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_unfenced_code.png"))

            # 2. Copy: the code block's button copies the code, the message's button the answer's own text
            answers.first.locator(".midori-copy-code").click()
            expect(answers.first.locator(".midori-copy-code")).to_have_text("Copied")
            assert clipboard(page) == CODE + "\n"
            answers.first.locator('[data-midori-action="copy"]').click()
            expect(answers.first.locator('[data-midori-action="copy"]')).to_have_text("Copied")
            assert clipboard(page) == MANGLED
            # As text: the answer's own text; As Markdown: rendered again
            answers.first.locator('[data-midori-action="as-text"]').click()
            expect(answers.first.locator(".midori-as-text")).to_contain_text("# Example usage:")
            expect(answers.first.locator("pre.midori-code")).to_have_count(0)
            answers.first.locator('[data-midori-action="as-text"]').click()
            expect(answers.first.locator("pre.midori-code")).to_have_count(1)

            # 3. typing during an answer: Send reads Queue, Enter queues the message (shown, box emptied),
            # Esc stops the answer, and the queued message is sent and answered next
            box.press_sequentially("Tell me a long story.", delay=20)
            box.press("Enter")
            expect(output.locator(".midori-chat-live")).to_contain_text("Once upon a time", timeout=60_000)
            expect(output.locator(".midori-composer-send")).to_have_text("Queue")
            box.press_sequentially(TYPED_DURING_ANSWER, delay=TYPING_DELAY_MS)
            box.press("Enter")
            queued = output.locator(".midori-chat-queued")
            expect(queued).to_contain_text(TYPED_DURING_ANSWER)
            assert box.input_value() == ""
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_queued_while_answering.png"))
            box.press("Escape")  # the panel has the focus: Esc stops
            expect(output.locator(".midori-chat-stopped")).to_be_visible(timeout=30_000)
            expect(answers).to_have_count(3, timeout=60_000)
            expect(answers.nth(2)).to_contain_text("A short one: the end.")
            users = output.locator(".midori-chat-user .midori-chat-text")
            assert users.all_inner_texts()[1:] == ["Tell me a long story.", TYPED_DURING_ANSWER]  # in order, apart
            expect(queued).to_have_count(0)

            # 4. edit an earlier message and send it again: the conversation forks, the old version stays
            output.locator('.midori-chat-user [data-midori-action="edit"]').first.click()
            expect(box).to_have_value("Write a function that reverses a string.")
            expect(output.locator(".midori-chat-info")).to_contain_text("Editing message 1")
            box.press("End")
            box.press_sequentially(" In one line.", delay=20)
            box.press("Enter")
            expect(output.locator(".midori-chat-version")).to_have_text("2/2", timeout=60_000)
            expect(answers.first).to_contain_text("Edited: here is another way.")
            assert answers.count() == 1 and users.first.inner_text().endswith("In one line.")
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_edit_branch.png"))
            output.locator('[data-midori-action="branch"]').first.click()  # ‹ : the first version again
            expect(output.locator(".midori-chat-version")).to_have_text("1/2")
            expect(answers).to_have_count(3)
            expect(answers.first.locator("pre.midori-code")).to_have_count(1)

            # 5. Esc is the panel's only while the panel has the focus: pressed in a notebook cell's editor the
            # answer goes on; pressed with the focus on one of the panel's buttons it stops the answer
            stopped = output.locator(".midori-chat-stopped")
            before = stopped.count()
            box.press_sequentially("Another long story.", delay=20)
            box.press("Enter")
            live = output.locator(".midori-chat-live")
            expect(live).to_contain_text("Once upon a time", timeout=60_000)
            page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
            page.keyboard.press("Escape")
            written = len(live.text_content())
            page.wait_for_function("n => { const live = document.querySelector('.midori-chat-live');"
                                   " return live !== null && live.textContent.length > n + 30; }",
                                   arg=written, timeout=30_000)  # still being written
            assert stopped.count() == before
            as_text = answers.first.locator('[data-midori-action="as-text"]')
            as_text.focus()
            page.keyboard.press("Escape")
            expect(stopped).to_have_count(before + 1, timeout=30_000)
            expect(button("Stop")).to_be_disabled(timeout=30_000)

            # 6. the response-format box: several lines, checked as you type (where the JSON breaks, then the
            # schema's name); the answer given under the schema carries a "schema" badge
            output.get_by_text("Settings (apply to the next message)").click()
            field = output.locator('textarea[placeholder^="empty: free text"]')
            check = output.locator(".midori-format-check")
            expect(check).to_contain_text("Free text")
            field.click()
            field.press_sequentially('{"title": "City", "type": "object",', delay=10)
            field.press("Enter")
            field.press_sequentially(' "properties": {', delay=10)
            expect(check).to_contain_text("line 2", timeout=60_000)  # the kernel checks each key press
            assert field.input_value().count("\n") == 1  # a line break in the box, nothing sent
            field.press_sequentially('"name": {"type": "string"}}, "required": ["name"]}', delay=10)
            expect(check).to_contain_text("JSON schema 'City'", timeout=60_000)
            box.click()
            box.press_sequentially("A city.", delay=20)
            box.press("Enter")
            expect(output.locator(".midori-chat-schema")).to_have_count(1, timeout=60_000)
            expect(answers.last).to_contain_text("Paris")
            output.scroll_into_view_if_needed()
            answers.last.scroll_into_view_if_needed()  # the transcript kept the place the branch click scrolled to
            page.screenshot(path=str(artifacts_dir / "chat_response_format.png"))
        finally:
            browser.close()
