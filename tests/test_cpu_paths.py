"""The CPU-dependent tests (marked ``cpu_path``) also pass on the kernels of older CPUs.

torch picks its vector kernels from the CPU (``torch.backends.cpu.get_cpu_capability()``:
``AVX512``, ``AVX2``, ``DEFAULT``), oneDNN picks its own (bfloat16 products are native from
AVX-512 on), and bitsandbytes picks its CPU kernels from both. A machine runs its own path in
the ordinary test run; here the same tests run again in a pytest process of their own with torch
held to the kernels of an older CPU (``ATEN_CPU_CAPABILITY``) and oneDNN to the matching
instruction set (``ONEDNN_MAX_CPU_ISA``), so every machine tests every path below its own. A
newer path than the machine's cannot be forced; those tests check the shapes and functions such
a path needs instead (see ``test_engine.py``). Which path each test ran is listed in the
"CPU paths" summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT
from .suite_guards import CPU_PATHS_FILE_ENV

#: ATEN_CPU_CAPABILITY value -> (torch's name for it, the oneDNN instruction set that goes with it)
MODES = {"avx2": ("AVX2", "AVX2"), "default": ("DEFAULT", "SSE41")}
RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_cpu_dependent_tests_pass_on_older_kernels(mode, tmp_path, request, cpu_path):
    capability, isa = MODES[mode]
    native = torch.backends.cpu.get_cpu_capability()
    if RANK.get(native, 0) <= RANK[capability]:
        pytest.skip(f"torch runs {native} kernels on this CPU: the ordinary test run took that path")
    markexpr = request.config.option.markexpr
    selection = "cpu_path" + (f" and ({markexpr})" if markexpr else "")
    report = tmp_path / "cpu-paths.jsonl"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": mode, "ONEDNN_MAX_CPU_ISA": isa, "DNNL_MAX_CPU_ISA": isa,
           CPU_PATHS_FILE_ENV: str(report)}
    command = [sys.executable, "-m", "pytest", "tests", "-m", selection, "-p", "no:cacheprovider", "-q", "-rfEs"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    output = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"the cpu_path tests failed on {capability} kernels:\n{output}"
    assert " passed" in proc.stdout and " failed" not in proc.stdout, output
    lines = [json.loads(line) for line in report.read_text().splitlines()] if report.is_file() else []
    assert lines, f"no CPU-dependent test said which path it ran:\n{output}"
    for line in lines:
        cpu_path(f"under ATEN_CPU_CAPABILITY={mode}: {line['nodeid']}: {line['what']}", line["path"])
    described = [line["path"] for line in lines if "torch CPU capability" in line["path"]]
    assert described and all(f"torch CPU capability {capability}," in path for path in described), described
