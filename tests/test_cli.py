"""The main job: `python -m midori_hf_nb "question"` streams an answer to the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midori_hf_nb", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_main_job_answers_from_default_model():
    out = run_cli("--greedy", "--max-new-tokens", "32", "--stats", "What is the capital of France?")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "tok/s" in out.stderr and "finish: stop" in out.stderr
    assert "decode: engine]" in out.stderr  # the default path takes the engine's decode loop
    assert "Loading offline:smollm2-135m-instruct" in out.stderr  # the load progress bar


def test_cli_options_and_help():
    out = run_cli("--help")
    assert out.returncode == 0
    for option in ("--model", "--system", "--max-new-tokens", "--temperature", "--greedy", "--seed"):
        assert option in out.stdout


def test_cli_bad_input_gives_clear_error(tmp_path):
    out = run_cli("--temperature", "7", "hi")
    assert out.returncode == 2
    assert "temperature=7.0" in out.stderr and "0.0 to 2.0" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("--model", str(tmp_path / "nothing-here"), "hi")
    assert out.returncode == 2 and "no such local file or directory" in out.stderr
