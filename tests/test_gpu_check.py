"""The prepared GPU check runs its checks on CPU with a tiny model (``--dry-run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_on_cpu(default_model_dir, tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--tokenizer", str(default_model_dir),
         "--new-tokens", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["failed"] == []
    names = [c["check"] for c in report["checks"]]
    for dtype in ("bfloat16", "float32"):
        for part in ("device='auto' picks cpu", f"weights are {dtype}", "invoke", "stream joins to the invoked answer",
                     "cancel stops the stream", "batched compare", "decode tok/s agent vs pipeline measured"):
            assert any(name.startswith(f"tiny {dtype}: {part}") for name in names), (dtype, part)
        figure = report["figures"][f"tiny {dtype} decode tok/s"]
        assert figure["agent"] > 0 and figure["pipeline"] > 0
