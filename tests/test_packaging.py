"""The core imports without the notebook extra; the notebook layer names the extra when it is missing;
the scripted test agent needs no torch."""

from __future__ import annotations

import subprocess
import sys

#: run in a fresh interpreter in which the notebook extra's packages (and torch) cannot be imported
BLOCKER = r"""
import importlib.abc, importlib.machinery, sys
BLOCKED = {"IPython", "ipywidgets", "ipykernel", "nest_asyncio2", "matplotlib", "torch", "transformers"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
import importlib.util
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    if name.split(".")[0] in BLOCKED:
        return None
    return _find_spec(name, package)
importlib.util.find_spec = find_spec
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120)


def test_the_core_imports_without_ipython_widgets_or_torch():
    out = run_blocked(
        "import midori_hf_nb\n"
        "from midori_hf_nb import HuggingFaceLocalAgent, DEFAULT_MODEL, make_payload, compare\n"
        "agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL)\n"
        "assert agent.resolve_settings({'temperature': 0.5}).generation.do_sample\n"
        "import sys; assert 'IPython' not in sys.modules and 'torch' not in sys.modules\n"
        "print('core ok')\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "core ok" in out.stdout


def test_the_notebook_layer_names_the_missing_extra():
    out = run_blocked("import midori_hf_nb.notebook\n")
    assert out.returncode != 0
    assert "pip install 'midori-hf-nb[notebook]'" in out.stderr
    assert "IPython" in out.stderr


def test_the_scripted_agent_runs_without_torch():
    out = run_blocked(
        "import asyncio\n"
        "from midori_hf_nb import make_payload\n"
        "from midori_hf_nb.testing import ScriptedAgent\n"
        "r = asyncio.run(ScriptedAgent('<think>x</think>Paris.').invoke(make_payload('q')))\n"
        "print(r.thinking, r.response)\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "x Paris." in out.stdout
