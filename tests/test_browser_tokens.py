"""Token probabilities in a real browser: JupyterLab on 127.0.0.1 and Debian's Chromium (the setup of
``tests/test_browser.py``).

A notebook shows a :class:`~midori_hf_nb.notebook.ChatPanel` on the offline default model with
Probabilities on. The test sends a question, hovers a token of the answer and sees its card with
the alternatives and their probabilities (``docs/chat_token_probabilities.png``), focuses another
token with the keyboard and sees its card, clicks an alternative and sees the original and the
branch side by side (``docs/chat_token_branch.png``), then switches JupyterLab to its dark theme
and checks that the card takes the theme's colours (``docs/chat_token_probabilities_dark.png``). A
second cell shows ``token_view`` of the answer; the saved notebook is exported to static HTML by
nbconvert and opened from disk with no server and no kernel, where hovering a token still shows
its card (CSS alone). The server and its kernels are stopped at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from .test_browser import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, TOKEN, free_port, open_panel, stop_process_tree

pytestmark = pytest.mark.browser

DOCS = REPO_ROOT / "docs"
QUESTION = "What is the capital of France?"
PANEL_CELL = """\
from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent
from midori_hf_nb.notebook import ChatPanel, token_view

agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False)
panel = ChatPanel(agent, greedy=True, max_new_tokens=24, top_logprobs=5)
panel
"""
VIEW_CELL = "token_view(panel.entries[-1].as_response())"


def luminance(css_colour: str) -> float:
    red, green, blue = (int(v) for v in re.findall(r"\d+", css_colour)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a notebook with the panel cell and the view cell; yields (base URL, root folder)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: run `make browser` to run the real-browser tests")
    import nbformat

    root = tmp_path / "root"
    root.mkdir()
    notebook = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(PANEL_CELL), nbformat.v4.new_code_cell(VIEW_CELL)]
    nbformat.write(notebook, root / "tokens.ipynb")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    for name, folder in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")):
        env[name] = str(tmp_path / folder)
        (tmp_path / folder).mkdir()
    settings = tmp_path / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                           "checkForUpdates": False}))
    port = free_port()
    with open(tmp_path / "jupyter.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1", "--port",
             str(port), "--ServerApp.port_retries=0", f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
             "--LabApp.news_url=None"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail("JupyterLab did not start: " + (tmp_path / "jupyter.log").read_text()[-3000:])
                    time.sleep(0.5)
            yield base, root, env
        finally:
            stop_process_tree(proc)


def use_theme(page, name: str) -> None:
    """Settings > Theme > ``name`` in JupyterLab's menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Settings$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Theme")).first.hover()
    page.locator(".lm-Menu-item", has_text=re.compile(rf"^{re.escape(name)}$")).first.click()


@pytest.mark.slow  # the notebook's kernel loads the offline default model
def test_hover_a_token_in_the_chat_panel(lab, artifacts_dir):
    from playwright.sync_api import expect, sync_playwright

    base, root, env = lab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            output, box, button = open_panel(page, base, "tokens.ipynb")
            expect(output.locator("button", has_text="Probabilities")).to_be_visible()
            box.fill(QUESTION)
            button("Send").click()
            answer = output.locator(".midori-chat-assistant").first
            tokens = answer.locator(".mt-tok")
            expect(tokens.first).to_be_visible(timeout=300_000)
            expect(output.locator(".midori-chat-status")).to_contain_text("done", timeout=300_000)

            # hover: the token's card shows its alternatives with their probabilities
            paris = answer.locator('.mt-tok[data-step="5"]')
            card = paris.locator(".mt-card")
            expect(card).to_be_hidden()
            paris.hover()
            expect(card).to_be_visible()
            expect(card).to_contain_text("step 5")
            rows = card.locator("table.mt-alts tbody tr")
            assert rows.count() == 5
            assert re.search(r"Paris\s+\d+(\.\d+)?%", rows.first.inner_text()), rows.first.inner_text()
            output.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_token_probabilities.png"))
            shutil.copy(artifacts_dir / "chat_token_probabilities.png", DOCS / "chat_token_probabilities.png")

            # keyboard focus shows a card too (no mouse over it)
            page.mouse.move(5, 5)
            expect(card).to_be_hidden()
            first = tokens.first
            first.focus()
            expect(first.locator(".mt-card")).to_be_visible()

            # a click on an alternative branches the answer: original and branch side by side
            first.locator(".mt-alt").first.click()
            branches = output.locator(".midori-branches")
            expect(branches.locator(".midori-tokens")).to_have_count(2, timeout=300_000)
            expect(output.locator(".midori-chat-status")).to_contain_text("branched answer 1 at step 0")
            branches.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "chat_token_branch.png"))
            shutil.copy(artifacts_dir / "chat_token_branch.png", DOCS / "chat_token_branch.png")

            # the dark theme: the card takes the theme's colours
            light = luminance(card.evaluate("e => getComputedStyle(e).backgroundColor"))
            use_theme(page, "JupyterLab Dark")
            page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
            paris.hover()
            expect(card).to_be_visible()
            dark = luminance(card.evaluate("e => getComputedStyle(e).backgroundColor"))
            assert light > 0.8 and dark < 0.3, (light, dark)
            text = luminance(card.evaluate("e => getComputedStyle(e).color"))
            assert text > 0.6, text
            page.screenshot(path=str(artifacts_dir / "chat_token_probabilities_dark.png"))
            shutil.copy(artifacts_dir / "chat_token_probabilities_dark.png", DOCS / "chat_token_probabilities_dark.png")
            use_theme(page, "JupyterLab Light")

            # the static view, saved and exported: a page with no server and no kernel still shows the cards
            page.locator(".jp-NotebookPanel .jp-Cell .cm-content").nth(1).click()
            page.keyboard.press("Shift+Enter")
            view = page.locator(".jp-NotebookPanel .jp-OutputArea").nth(1).locator(".midori-tokens")
            expect(view).to_be_visible(timeout=60_000)
            page.keyboard.press("Control+s")
            page.wait_for_timeout(2000)
        finally:
            browser.close()
        exported = root / "tokens.html"
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(root / "tokens.ipynb")],
                       env=env, check=True, capture_output=True, timeout=300)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=[*CHROMIUM_ARGS, "--allow-file-access-from-files"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else route.abort())  # offline: nothing but the file itself
            page.goto(exported.as_uri())
            static = page.locator(".midori-tokens .mt-tok").nth(5)
            static.scroll_into_view_if_needed()
            expect(static.locator(".mt-card")).to_be_hidden()
            static.hover()
            expect(static.locator(".mt-card")).to_be_visible()
            expect(static.locator(".mt-card")).to_contain_text("alternative")
            page.screenshot(path=str(artifacts_dir / "token_view_static.png"))
        finally:
            browser.close()
