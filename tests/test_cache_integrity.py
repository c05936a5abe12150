"""Damaged caches are found and converted again; damaged model folders and GGUF files are named.

Every test that writes, damages or deletes cache files works on a copy of the default model's
conversion in a temporary cache (``MIDORI_HF_NB_CACHE``), never on the user's cache.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from midori_hf_nb import HuggingFaceConfig, ModelSourceError
from midori_hf_nb import engine
from midori_hf_nb.integrity import (
    MANIFEST,
    CacheRepairWarning,
    CorruptModelError,
    check_gguf_file,
    check_json,
    check_safetensors,
    sha256_file,
    verify_conversion,
)
from midori_hf_nb.sources import default_model_path, gguf_cache_dir

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def cache_template(tmp_path_factory, default_model_dir) -> Path:
    """A cache root with the default model's float32 conversion and a bfloat16 copy made by this version."""
    root = tmp_path_factory.mktemp("cache-template")
    target = root / "gguf" / gguf_cache_dir(default_model_path()).name
    target.parent.mkdir(parents=True)
    shutil.copytree(default_model_dir, target, ignore=shutil.ignore_patterns(
        "bfloat16*", "float16*", "*.lock", "*.partial-*", "*.damaged-*"))
    assert verify_conversion(target) == []  # upgrades the manifest of a conversion made by an older version
    assert "files" in json.loads((target / MANIFEST).read_text())
    engine.dtype_variant(target, "bfloat16", progress=False)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch, cache_template) -> Path:
    """A private copy of the template cache (file times kept, so its manifests match); its conversion folder."""
    root = tmp_path / "cache"
    shutil.copytree(cache_template, root)
    monkeypatch.setenv("MIDORI_HF_NB_CACHE", str(root))
    monkeypatch.delenv("MIDORI_HF_NB_VERIFY", raising=False)
    target = gguf_cache_dir(default_model_path())
    assert target.parent.parent == root and (target / "bfloat16" / MANIFEST).is_file()
    yield target
    shutil.rmtree(root, ignore_errors=True)  # about 800 MB per test


def _load(dtype: str, model: str | None = None) -> engine.LoadedModel:
    """Load outside the shared registry (which keys models by source, not by cache folder)."""
    from midori_hf_nb import DEFAULT_MODEL

    config = HuggingFaceConfig(model=model or DEFAULT_MODEL, device="cpu", torch_dtype=dtype, progress=False)
    return engine.load(engine.spec_for(config), progress=False)


def _answer(lm: engine.LoadedModel) -> str:
    encoded = lm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
    out = lm.model.generate(**encoded, max_new_tokens=12, do_sample=False)
    return lm.tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def _repairs(record: list) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheRepairWarning)]


def _scribble(path: Path, n: int = 4 << 20) -> None:
    """Write ``n`` random bytes in the middle of ``path``: same size, content changed."""
    with path.open("r+b") as fh:
        fh.seek(path.stat().st_size // 2 - n // 2)
        fh.write(os.urandom(n))


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(size)


def _manifest_matches(folder: Path) -> None:
    files = json.loads((folder / MANIFEST).read_text())["files"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert files[name]["sha256"] == sha256_file(folder / name)
        assert files[name]["size"] == (folder / name).stat().st_size


# --------------------------------------------------------------------------- cached conversions


@pytest.mark.slow
def test_random_bytes_in_cached_weights_are_found_and_converted_again_from_the_gguf(cache):
    weights = cache / "model.safetensors"
    size = weights.stat().st_size
    _scribble(weights)
    assert weights.stat().st_size == size
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lm = _load("float32")
    repairs = _repairs(record)
    assert len(repairs) == 1, repairs
    assert str(cache) in repairs[0] and "model.safetensors: content changed" in repairs[0]
    assert "converting" in repairs[0] and default_model_path().name in repairs[0]
    assert "Paris" in _answer(lm)  # before this check: '' from the damaged weights
    lm.close()
    _manifest_matches(cache)
    assert not list(cache.parent.glob(f"{cache.name}.damaged-*"))
    assert not list(cache.parent.glob(f"{cache.name}.partial-*"))


@pytest.mark.slow
def test_truncated_cached_tokenizer_json_is_converted_again_from_the_gguf(cache):
    tokenizer = cache / "tokenizer.json"
    _truncate(tokenizer, tokenizer.stat().st_size // 2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lm = _load("float32")
    repairs = _repairs(record)
    assert len(repairs) == 1 and str(cache) in repairs[0] and "tokenizer.json: truncated" in repairs[0], repairs
    assert "Paris" in _answer(lm)
    lm.close()
    _manifest_matches(cache)


@pytest.mark.slow
def test_truncated_bfloat16_weights_are_saved_again_from_the_float32_conversion(cache):
    variant = cache / "bfloat16"
    parent_manifest = (cache / MANIFEST).read_bytes()
    _truncate(variant / "model.safetensors", 1_000_000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lm = _load("bfloat16")
    repairs = _repairs(record)
    assert len(repairs) == 1 and str(variant) in repairs[0], repairs
    assert "model.safetensors: truncated: 1000000 bytes" in repairs[0] and "saving the bfloat16 copy again" in repairs[0]
    assert Path(lm.path) == variant
    assert "Paris" in _answer(lm)
    lm.close()
    assert (cache / MANIFEST).read_bytes() == parent_manifest  # the float32 conversion was not redone
    _manifest_matches(variant)


@pytest.mark.slow
def test_damaged_float32_conversion_is_converted_again_before_a_bfloat16_copy_is_made_from_it(cache):
    """A copy is only derived from a float32 conversion whose every file hashes as recorded."""
    shutil.rmtree(cache / "bfloat16")
    weights = cache / "model.safetensors"
    stat = weights.stat()
    _scribble(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the quick check cannot see this change
    assert engine.convert_gguf(default_model_path(), progress=False) == cache
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        started = time.perf_counter()
        variant = engine.dtype_variant(cache, "bfloat16", progress=False)
    repairs = _repairs(record)
    assert len(repairs) == 1 and str(cache) in repairs[0] and "model.safetensors: content changed" in repairs[0]
    assert variant == cache / "bfloat16" and verify_conversion(cache, full=True) == []
    assert verify_conversion(variant, full=True) == []
    print(f"float32 conversion and bfloat16 copy made again in {time.perf_counter() - started:.1f} s")


@pytest.mark.slow
def test_cache_damaged_behind_the_quick_check_names_the_file_when_it_fails_to_load(cache):
    variant = cache / "bfloat16"
    tokenizer = variant / "tokenizer.json"
    stat = tokenizer.stat()
    _scribble(tokenizer, 1000)
    os.utime(tokenizer, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CorruptModelError) as info:
        _load("bfloat16")
    message = str(info.value)
    assert f"model directory {variant} is damaged: tokenizer.json: not valid JSON" in message
    assert f"delete {variant}" in message and "MIDORI_HF_NB_VERIFY=full" in message


@pytest.mark.slow
def test_touched_or_copied_cache_is_accepted_without_converting_again(cache):
    weights = cache / "model.safetensors"
    inode = weights.stat().st_ino
    os.utime(weights)  # a new mtime, the same content (as a copy without preserved times gives)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)
        assert engine.convert_gguf(default_model_path(), progress=False) == cache
    assert weights.stat().st_ino == inode
    recorded = json.loads((cache / MANIFEST).read_text())["files"]["model.safetensors"]
    assert recorded["mtime_ns"] == weights.stat().st_mtime_ns  # next load does not hash it again


@pytest.mark.slow
def test_full_verification_finds_a_change_that_kept_the_file_time(cache, monkeypatch):
    variant = cache / "bfloat16"
    weights = variant / "model.safetensors"
    stat = weights.stat()
    _scribble(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # The quick check compares sizes and times only: this damage passes it (the documented limit) ...
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)
        assert engine.dtype_variant(cache, "bfloat16", progress=False) == variant
    assert [p.path.name for p in verify_conversion(variant, full=True)] == ["model.safetensors"]
    # ... a full verification, asked for through the environment, finds and repairs it.
    monkeypatch.setenv("MIDORI_HF_NB_VERIFY", "full")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert engine.dtype_variant(cache, "bfloat16", progress=False) == variant
    repairs = _repairs(record)
    assert len(repairs) == 1 and "model.safetensors: content changed" in repairs[0]
    assert verify_conversion(variant, full=True) == []
    monkeypatch.setenv("MIDORI_HF_NB_VERIFY", "sometimes")
    with pytest.raises(ValueError, match="MIDORI_HF_NB_VERIFY='sometimes'.*'quick', 'full'"):
        engine.convert_gguf(default_model_path(), progress=False)


def _as_older_version(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["files"]
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


@pytest.mark.slow
def test_manifest_of_an_older_version_is_upgraded_without_converting_again(cache):
    _as_older_version(cache)
    inode = (cache / "model.safetensors").stat().st_ino
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)
        assert engine.convert_gguf(default_model_path(), progress=False) == cache
    assert (cache / "model.safetensors").stat().st_ino == inode
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["convert_seconds"] > 0 and "gguf_file" in manifest
    assert sorted(manifest["files"]) == ["chat_template.jinja", "config.json", "generation_config.json",
                                         "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    _manifest_matches(cache)


@pytest.mark.slow
def test_damaged_cache_of_an_older_version_is_converted_again(cache):
    variant = cache / "bfloat16"
    _as_older_version(variant)
    tokenizer = variant / "tokenizer.json"
    _truncate(tokenizer, 1000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert engine.dtype_variant(cache, "bfloat16", progress=False) == variant
    repairs = _repairs(record)
    assert len(repairs) == 1 and "tokenizer.json: truncated" in repairs[0], repairs
    _manifest_matches(variant)


@pytest.mark.slow
def test_cache_with_a_missing_file_or_a_damaged_manifest_is_made_again(cache):
    variant = cache / "bfloat16"
    _as_older_version(variant)
    (variant / "config.json").unlink()
    with pytest.warns(CacheRepairWarning, match=r"config\.json: missing"):
        engine.dtype_variant(cache, "bfloat16", progress=False)
    (variant / "tokenizer_config.json").unlink()
    with pytest.warns(CacheRepairWarning, match=r"tokenizer_config\.json: missing"):
        engine.dtype_variant(cache, "bfloat16", progress=False)
    (variant / MANIFEST).write_text('{"files": {')
    with pytest.warns(CacheRepairWarning, match=r"midori-source\.json: not valid JSON"):
        engine.dtype_variant(cache, "bfloat16", progress=False)
    assert verify_conversion(variant, full=True) == []


#: Capabilities that let root write into folders without write permission; dropped for the read-only check.
OVERRIDES = "-dac_override,-dac_read_search,-fowner"

#: The read-only check run in a process of its own: ``CACHE PROBE`` -> JSON on the last line.
READ_ONLY_CHECK = """
import json, os, sys
from pathlib import Path
from midori_hf_nb import engine
from midori_hf_nb.integrity import CorruptModelError
cache, probe = Path(sys.argv[1]), Path(sys.argv[2])
result = {"uid": os.geteuid(), "writes_into_read_only_folders": os.access(probe, os.W_OK), "error": None}
try:
    engine.dtype_variant(cache, "bfloat16", progress=False)
except CorruptModelError as exc:
    result["error"] = str(exc)
print(json.dumps(result))
"""


def _read_only_check_without_root_overrides(cache: Path, probe: Path) -> str:
    """The error of :func:`engine.dtype_variant` on ``cache``, in a process that keeps root's user id
    but not the capabilities that ignore folder permissions (``setpriv``, util-linux), so the
    check runs where CI runs as root."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("this user writes into read-only folders (root with CAP_DAC_OVERRIDE) and setpriv "
                    "(util-linux) is not installed to drop that capability for the check")
    command = [setpriv, f"--inh-caps={OVERRIDES}", f"--bounding-set={OVERRIDES}",
               sys.executable, "-c", READ_ONLY_CHECK, str(cache), str(probe)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["writes_into_read_only_folders"] is False, f"setpriv did not drop the capabilities: {result}"
    assert result["error"] is not None, f"the damaged read-only cache raised nothing: {result}"
    return result["error"]


@pytest.mark.slow
def test_damaged_cache_in_a_read_only_folder_says_so(cache, tmp_path, record_property):
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    variant = cache / "bfloat16"
    _truncate(variant / "model.safetensors", 1000)
    cache.chmod(0o555)
    try:
        if os.access(probe, os.W_OK):  # root: the check runs without the capabilities that ignore permissions
            message = _read_only_check_without_root_overrides(cache, probe)
            how = "as root without CAP_DAC_OVERRIDE (setpriv), in a process of its own"
        else:
            with pytest.raises(CorruptModelError) as info:
                engine.dtype_variant(cache, "bfloat16", progress=False)
            message = str(info.value)
            how = f"in this process (user id {os.geteuid()})"
    finally:
        cache.chmod(0o755)
        probe.chmod(0o755)
    record_property("read-only check", how)
    print(f"read-only check ran {how}")
    assert str(variant) in message and "model.safetensors: truncated" in message
    assert "not writable" in message and "MIDORI_HF_NB_CACHE" in message


@pytest.mark.slow
def test_quick_check_on_load_reads_no_file_content(cache):
    """The per-load check is a few stat calls: far below hashing the 538 MB weights."""
    started = time.perf_counter()
    for _ in range(10):
        assert verify_conversion(cache) == [] and verify_conversion(cache / "bfloat16") == []
    quick = (time.perf_counter() - started) / 10
    started = time.perf_counter()
    assert verify_conversion(cache, full=True) == []
    full = time.perf_counter() - started
    print(f"quick check {quick * 1000:.2f} ms, full check {full * 1000:.0f} ms")
    assert quick < 0.05 and quick * 10 < full


# --------------------------------------------------------------------------- a user's own model folder


@pytest.fixture
def own_model(tmp_path, tiny_model) -> Path:
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model, folder)
    return folder


def _damaged_load(folder: Path) -> str:
    with pytest.raises(CorruptModelError) as info:
        _load("float32", model=str(folder))
    assert isinstance(info.value, ModelSourceError)
    message = str(info.value)
    assert str(folder) in message and "not a cache" in message and "download the model again" in message
    return message


def test_truncated_weights_in_own_folder_name_the_file(own_model):
    weights = own_model / "model.safetensors"
    size = weights.stat().st_size
    _truncate(weights, size // 2)
    message = _damaged_load(own_model)
    assert f"model.safetensors: truncated: {size // 2} bytes, its header describes {size}" in message


def test_truncated_tokenizer_json_in_own_folder_names_the_file(own_model):
    _truncate(own_model / "tokenizer.json", 5000)
    assert "tokenizer.json: truncated: not valid JSON" in _damaged_load(own_model)


def test_invalid_config_json_in_own_folder_names_the_file(own_model):
    config = own_model / "config.json"
    config.write_text(config.read_text().replace('"', "", 3))
    assert "config.json: not valid JSON: " in _damaged_load(own_model)


def test_random_file_as_weights_in_own_folder_is_not_a_safetensors_file(own_model):
    weights = own_model / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    assert "model.safetensors: not a safetensors file" in _damaged_load(own_model)


def test_sound_folder_passes_the_structural_checks(tiny_model, default_model_dir):
    for folder in (tiny_model, default_model_dir):
        assert check_safetensors(folder / "model.safetensors") is None
        assert check_json(folder / "tokenizer.json") is None


# --------------------------------------------------------------------------- GGUF files


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MIDORI_HF_NB_CACHE", str(root))
    return root


def _gguf_error(path: Path, empty_cache: Path) -> str:
    with pytest.raises(CorruptModelError) as info:
        _load("float32", model=str(path))
    message = str(info.value)
    assert str(path) in message
    folders = [p for p in (empty_cache / "gguf").iterdir() if p.is_dir()] if (empty_cache / "gguf").exists() else []
    assert folders == [], "nothing may be cached"
    return message


def test_empty_gguf_file_is_refused(tmp_path, empty_cache):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert "is empty (0 bytes), not a GGUF model" in _gguf_error(path, empty_cache)


def test_file_that_is_not_gguf_is_refused(tmp_path, empty_cache):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + os.urandom(4000))
    assert "is not a GGUF file: it does not start with the magic bytes b'GGUF'" in _gguf_error(path, empty_cache)


def test_truncated_gguf_file_is_refused_before_conversion(tmp_path, empty_cache):
    original = default_model_path()
    for size, expected in ((10, "shorter than a GGUF header"), (30, "it ends inside its metadata"),
                           (40_000_000, "bytes missing")):
        path = tmp_path / f"cut-{size}.gguf"
        with original.open("rb") as src:
            path.write_bytes(src.read(size))
        message = _gguf_error(path, empty_cache)
        assert f"is truncated: {size} bytes" in message and expected in message, message
        assert "download or copy it again" in message


def test_whole_gguf_file_passes_the_check(tmp_path):
    original = default_model_path()
    assert check_gguf_file(original) is None  # the whole file: no CorruptModelError
    cut = tmp_path / "one-byte-short.gguf"
    with original.open("rb") as src:
        cut.write_bytes(src.read(original.stat().st_size - 1))
    with pytest.raises(CorruptModelError, match=r"\(1 bytes missing\)"):  # the same check refuses one byte less
        check_gguf_file(cut)


def test_gguf_file_transformers_cannot_read_is_named(tmp_path, empty_cache):
    """A well-formed GGUF file with no model in it: the transformers error comes back with the path."""
    path = tmp_path / "no-model.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    check_gguf_file(path)
    with pytest.raises(ModelSourceError) as info:
        _load("float32", model=str(path))
    message = str(info.value)
    assert str(path) in message and "could not read it as a GGUF model" in message
    assert not list((empty_cache / "gguf").glob("no-model-*.partial-*"))


@pytest.mark.parametrize("cut", [1, 1000, 6030, 99_999, 100_000, 250_000, 1_000_000, -1])
def test_json_cut_anywhere_is_called_truncated(tmp_path, default_model_dir, cut):
    """Wherever the cut falls (between tokens, inside a string, inside a UTF-8 character: byte 6030)."""
    text = (default_model_dir / "tokenizer.json").read_bytes()
    path = tmp_path / "tokenizer.json"
    path.write_bytes(text[:cut])
    assert check_json(path) == f"truncated: not valid JSON, the text ends mid-document after {len(text[:cut])} bytes"
    path.write_bytes(text[:5000] + b"garbage" + text[5000:])
    assert check_json(path).startswith("not valid JSON: Expecting value at line ")
