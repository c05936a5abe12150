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
    assert "Loading" not in out.stderr and "%|" not in out.stderr  # stderr is a pipe: no progress line


def run_in_terminal(args: list[str], *, columns: int = 100, timeout: float = 300) -> str:
    """Run ``args`` with a pseudo-terminal as stdin, stdout and stderr; returns all it wrote."""
    import os
    import pty
    import select
    import struct
    import termios
    import time

    from fcntl import ioctl

    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of `columns` columns, then the command
        ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        os.execv(args[0], args)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def screen_lines(output: str) -> list[str]:
    """What a terminal shows after ``output``: carriage returns, line feeds, cursor up (ESC [ A) and
    erase to the end of the line (ESC [ K); other escape sequences are dropped."""
    import re

    rows: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|.", output, flags=re.S):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            col = 0
            while len(rows) <= row:
                rows.append([])
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token.endswith("K"):
                del rows[row][col:]
        else:
            line = rows[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = token
            else:
                line.append(token)
            col += 1
    return ["".join(r).rstrip() for r in rows]


@pytest.mark.slow
def test_in_a_terminal_the_load_line_is_cleared_and_the_answer_starts_on_a_clean_line():
    output = run_in_terminal([sys.executable, "-m", "midori_hf_nb", "--greedy", "--max-new-tokens", "16",
                              "What is the capital of France?"])
    assert "Loading offline:smollm2-135m-instruct" in output  # the load showed on the terminal
    lines = [line for line in screen_lines(output) if line.strip()]
    assert lines and lines[0].startswith("The capital of France is Paris"), lines  # at column 0
    assert not any("Loading" in line or "%|" in line for line in lines), lines  # nothing left of the load


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
