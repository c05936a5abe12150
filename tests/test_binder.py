"""Binder files: same package set as the README's setup, and postBuild works in a fresh environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .conftest import ROOT

BINDER = ROOT / "binder"
UNREACHABLE_HERE = "--extra-index-url https://download.pytorch.org/whl/cpu"


def binder_requirements() -> list[Requirement]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith(("#", "-"))]


def torch_pin_of_setup() -> str:
    match = re.search(r"install (torch==[\d.]+)", (ROOT / "Makefile").read_text())
    assert match, "the Makefile's setup installs a pinned CPU torch"
    return match.group(1)


def test_binder_files_exist_and_postbuild_is_executable():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert os.access(BINDER / "postBuild", os.X_OK)
    text = (BINDER / "requirements.txt").read_text()
    assert UNREACHABLE_HERE in text and "CPU" in text  # the CPU torch wheel source is documented


def test_binder_requirements_equal_project_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = {str(Requirement(r)) for r in project if not r.startswith("torch")} | {torch_pin_of_setup()}
    assert {str(r) for r in binder_requirements()} == expected


def _resolve(args: list[str], report: Path) -> dict[str, str]:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *args]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in data["install"]}


def _reachable_requirements(tmp_path: Path) -> Path:
    """binder/requirements.txt without the PyTorch index, which this network cannot reach."""
    local = tmp_path / "requirements.txt"
    local.write_text((BINDER / "requirements.txt").read_text().replace(UNREACHABLE_HERE, ""))
    return local


@pytest.mark.slow
def test_binder_resolves_to_the_same_package_set_as_setup(tmp_path):
    binder = _resolve(["-r", str(_reachable_requirements(tmp_path))], tmp_path / "binder.json")
    setup = _resolve([torch_pin_of_setup(), "."], tmp_path / "setup.json")
    setup.pop("midori-hf-nb")
    assert binder == setup


@pytest.mark.slow
def test_postbuild_runs_in_a_fresh_virtual_environment(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(_reachable_requirements(tmp_path))],
                   check=True, timeout=900)
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "MIDORI_HF_NB_CACHE": str(tmp_path / "cache"), "VIRTUAL_ENV": str(env_dir)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(BINDER / "postBuild")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ready: offline:smollm2-135m-instruct" in done.stderr
    converted = list((tmp_path / "cache" / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors"))
    assert converted, "postBuild pre-converts the default model"
    answer = subprocess.run([str(python), "-m", "midori_hf_nb", "--greedy", "--max-new-tokens", "16",
                             "What is the capital of France?"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert "Paris" in answer.stdout, answer.stderr[-2000:]
