"""Configuration of the Hugging Face agent, validated at construction, and TOML loading.

Nothing here imports torch or transformers: building a configuration (and so an
agent) is instant.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError, refusal_message
from .generation_options import SEED_MAX, SEED_MIN, validate_generation_options, validate_seed  # noqa: F401 (re-exported)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float16", "float32", "bfloat16")
DECODE_LOOPS = ("auto", "generate")
WEIGHT_QUANTIZATIONS = ("int8", "int4", "auto")
_CUDA_INDEXED = re.compile(r"^cuda:\d+$")
#: Control characters (NUL, line breaks, ...): no hub id or path holds one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The longest ``model`` accepted (a path; hub ids are far shorter).
MAX_MODEL_CHARS = 4096

#: Generation settings a model's own ``generation_config.json`` may supply when the user sets none
#: (see :func:`midori_hf_nb.settings.resolve_call_settings`).
MODEL_DEFAULT_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "do_sample")

#: The project's defaults for the settings of :data:`MODEL_DEFAULT_FIELDS` that neither the user nor
#: the model's ``generation_config.json`` sets (a model without sampling values there, as the
#: offline default and most converted GGUF files):
#:
#: * greedy decoding (``do_sample=False``), the choice of ``benchmarks/default_settings.py``: on its
#:   twenty questions with checked answers the offline default model (SmolLM2-135M-Instruct) answered
#:   "What is the capital of France?" right every time greedily and 6 times in 10 sampled at
#:   temperature 0.2; overall, greedily 11 of the 20 questions were right (the same answer every
#:   time), sampled at 0.2 66% of the answers (10 questions right every time), at 0.7 62%.
#:   It is also what ``transformers`` does for a model whose file asks for no sampling. A model whose
#:   ``generation_config.json`` asks for sampling keeps its own values. (Greedy with
#:   ``repetition_penalty=1.1`` scored best, 17 of 20, but the engine's decode loop does not honour
#:   the penalty yet, so it would send every generation to ``model.generate``);
#: * ``temperature=0.2`` with ``top_p=0.9`` and ``top_k=50``: the values used when sampling is
#:   turned on without naming them (``do_sample=True``, or Greedy unticked in the chat panel); small
#:   models drift off topic within a sentence at 0.7;
#: * ``max_new_tokens=512``: room for a code answer; a looping answer is ended much earlier by the
#:   repetition guard (``stop_on_repetition``), not by this bound.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 512, "temperature": 0.2, "top_p": 0.9, "top_k": 50, "do_sample": False,
}

CONFIG_SECTION = "midori_ai_agent_base"
CONFIG_FILENAME = "config.toml"


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(refusal_message(f"HuggingFaceConfig.{name}", value, allowed))


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(name, value, "expected true or false")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(name, value, "expected a positive integer (> 0)")


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, "expected a number")
    return float(value)


def fields_from_kwargs(fields: Iterable[str], kwargs: dict[str, Any], rest: str) -> dict[str, Any]:
    """The constructor arguments of a configuration from keyword arguments: those naming one of
    ``fields`` set it, and the others are merged into the mapping field ``rest`` (generation kwargs
    of a local model, server options of a served one), after what ``rest`` itself was given."""
    known = set(fields)
    options = {k: v for k, v in kwargs.items() if k in known}
    given = options.pop(rest, None)
    if given is not None and not isinstance(given, Mapping):
        raise ConfigError(refusal_message(rest, given, "expected a dict of options (name -> value)"))
    merged = dict(given or {})
    merged.update({k: v for k, v in kwargs.items() if k not in known})
    return {**options, rest: merged}


@dataclass
class HuggingFaceConfig:
    """Settings of a :class:`~midori_hf_nb.HuggingFaceLocalAgent`.

    Args:
        model: a hub id (``"org/name"``), a local model directory, a ``.gguf`` file, or
            :data:`midori_hf_nb.DEFAULT_MODEL` for the offline SmolLM2-135M-Instruct.
        device: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), ``"mps"``.
        torch_dtype: ``"auto"``, ``"float16"``, ``"float32"`` or ``"bfloat16"``. ``"auto"`` is
            bfloat16 on a CPU with AVX2 or better (it decodes about 1.7x faster than float32
            there; greedy answers can differ in later words), float32 on other CPUs and with
            bitsandbytes quantization, and half precision on an accelerator.
            ``"float32"`` gives exact float32 everywhere.
        max_new_tokens: upper bound on generated tokens per call (> 0).
        temperature: sampling temperature, 0.0-2.0; 0 means greedy decoding.
        top_p: nucleus sampling mass, in (0, 1].
        top_k: top-k sampling (> 0).
        do_sample: sample (True) or decode greedily (False).
            Each of these five left unset (``None``) is taken from the model's own
            ``generation_config.json`` when it has the value, else from
            :data:`GENERATION_DEFAULTS` (chosen for small chat models by measured correctness:
            greedy decoding, 512 new tokens; temperature 0.2, top_p 0.9 and top_k 50 once sampling
            is turned on). The attribute reads the project default until a
            call resolves it; :attr:`unset_fields` names the fields left unset.
        stop_on_repetition: end a generation whose last tokens repeat one pattern (a loop such as
            "Ada, ada, ada, ...") with ``finish_reason="repetition"`` instead of running on to
            ``max_new_tokens`` (:class:`midori_hf_nb.settings.RepetitionGuard`).
        reproducible: the same prompt, settings and seed give the same tokens alone, batched,
            concurrently and from a kept KV cache (greedy or seeded, on CPU; see
            :mod:`midori_hf_nb.engine.reproducible`); ``metadata["reproducible"]`` says if it held.
        unset_fields: the generation fields the user did not set (filled in from ``None`` values;
            kept by :meth:`replace`); not normally given by hand.
        context_window: maximum tokens of prompt plus answer (> 0); the oldest memory is
            dropped to fit.
        trust_remote_code: allow model repositories to run their own Python code. Off by default.
        load_in_8bit / load_in_4bit: bitsandbytes quantization (at most one of them).
        generation_kwargs: further keyword arguments for ``model.generate`` (checked against
            ``transformers.GenerationConfig`` when a generation starts). Refused at once: ``seed``
            (a per-call option), ``num_beams`` other than 1 (beam search cannot stream) and
            ``num_return_sequences`` other than 1; see :func:`validate_generation_options`.
        progress: show one progress line on a terminal's stderr while a model converts or loads
            (cleared when it is loaded). Nothing is drawn where stderr is not a terminal (a
            notebook, a pipe): there the chat panel and streamed answers show the load.
        num_threads: torch intra-op threads used while generating on CPU: ``"auto"`` measures
            step by step whether one thread or every usable core is faster and uses that
            (:class:`midori_hf_nb.engine.ThreadGovernor`), a positive integer fixes the count,
            ``None`` leaves torch's setting alone. Torch's setting is process-wide. On an idle
            machine more threads decode faster; on a busy one torch's threads wait for each
            other at every operation and one thread can be several times faster.
        decode_loop: ``"auto"`` runs plain greedy or temperature/top-k/top-p decoding in the
            engine's own loop over the KV cache (same forward passes and the same tokens as
            ``model.generate``, without its per-token bookkeeping) and everything else
            through ``model.generate``; ``"generate"`` always uses ``model.generate``.
        quantize_weights: weight-only quantization of the linear layers with torch's own CPU
            kernels (CPU only; activations stay in ``torch_dtype``, best with bfloat16):
            ``"int8"`` stores each layer as int8 with one scale per output channel (the output
            head too); ``"int4"`` stores 4-bit values in groups of 32 with a scale and an offset
            per group (the head stays in ``torch_dtype``) -- for a Q4_0/Q4_1 GGUF file that
            reproduces the file's own 4-bit weights. Fewer bytes and faster decoding than float32
            (on AVX2 about as fast as bfloat16); changes the numerics, so answers can differ.
            ``"auto"`` keeps the precision of the source: on a CPU with AVX2 or better (where
            torch's int4/int8 kernels are vectorised) with ``torch_dtype="auto"``, a GGUF
            file whose layers are Q4_0/Q4_1 (Q8_0) loads them as ``"int4"`` (``"int8"``), and a head
            stored in 8 bits or fewer as int8 (:mod:`midori_hf_nb.engine.source_precision`); any
            other source, device or dtype keeps full weights. ``"auto"`` is the default: for the
            offline default model (a Q4_1 file) it decodes about 1.5-3x faster than bfloat16 on CPU
            with answers as good (``benchmarks/precision_answers.py``). ``None`` keeps full
            weights. ``"int8"`` and ``"int4"`` are not combinable with ``load_in_8bit`` / ``load_in_4bit``.
        fuse_projections: fuse each attention layer's query/key/value projections and each MLP's
            gate/up projections into one linear layer at load on CPU (fewer, larger products per token;
            :mod:`midori_hf_nb.engine.fusion`) for the architectures the engine knows (Llama, Mistral,
            Qwen2, Qwen3); other architectures load unfused with a warning naming the fallback.
            Same tokens as unfused in float32. ``False`` keeps the model's own layers.
    """

    model: str
    device: str = "auto"
    torch_dtype: str = "auto"
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    context_window: int = 4096
    trust_remote_code: bool = False
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    num_threads: int | str | None = "auto"
    decode_loop: str = "auto"
    quantize_weights: str | None = "auto"
    fuse_projections: bool = True
    stop_on_repetition: bool = True
    reproducible: bool = False
    unset_fields: frozenset[str] | None = None

    def __post_init__(self) -> None:
        given = self.unset_fields if self.unset_fields is not None else frozenset()
        if not isinstance(given, (set, frozenset, list, tuple)) or not set(given) <= set(MODEL_DEFAULT_FIELDS):
            _fail("unset_fields", self.unset_fields, "expected names among " + ", ".join(MODEL_DEFAULT_FIELDS))
        unset = set(given)
        for name in MODEL_DEFAULT_FIELDS:
            if getattr(self, name) is None:
                unset.add(name)
                setattr(self, name, GENERATION_DEFAULTS[name])
        self.unset_fields = frozenset(unset)
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if not isinstance(self.model, str) or not self.model.strip():
            _fail("model", self.model, "expected a hub id, a local directory, a .gguf file or DEFAULT_MODEL")
        if _CONTROL.search(self.model) or len(self.model) > MAX_MODEL_CHARS:
            _fail("model", self.model, f"expected a hub id, a local directory, a .gguf file or DEFAULT_MODEL: at most "
                  f"{MAX_MODEL_CHARS} characters, none of them a control character (such as NUL or a line break)")
        if not isinstance(self.device, str) or not (self.device in DEVICES or _CUDA_INDEXED.match(self.device)):
            _fail("device", self.device, "expected one of " + ", ".join(repr(d) for d in DEVICES) + " or 'cuda:N'")
        if self.torch_dtype not in DTYPES:
            _fail("torch_dtype", self.torch_dtype, "expected one of " + ", ".join(repr(d) for d in DTYPES))
        _check_positive_int("max_new_tokens", self.max_new_tokens)
        temperature = _check_number("temperature", self.temperature)
        if not 0.0 <= temperature <= 2.0:
            _fail("temperature", self.temperature, "expected a number from 0.0 to 2.0")
        top_p = _check_number("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            _fail("top_p", self.top_p, "expected a number in (0, 1]")
        _check_positive_int("top_k", self.top_k)
        _check_positive_int("context_window", self.context_window)
        for name in ("do_sample", "trust_remote_code", "load_in_8bit", "load_in_4bit", "progress", "stop_on_repetition",
                     "reproducible", "fuse_projections"):
            _check_bool(name, getattr(self, name))
        if self.load_in_8bit and self.load_in_4bit:
            raise ConfigError(
                "HuggingFaceConfig.load_in_8bit=True and load_in_4bit=True are both set: choose at most one quantization"
            )
        if self.quantize_weights is not None and self.quantize_weights not in WEIGHT_QUANTIZATIONS:
            _fail("quantize_weights", self.quantize_weights,
                  "expected None or one of " + ", ".join(repr(q) for q in WEIGHT_QUANTIZATIONS))
        if self.quantize_weights not in (None, "auto") and (self.load_in_8bit or self.load_in_4bit):
            raise ConfigError(
                f"HuggingFaceConfig.quantize_weights={self.quantize_weights!r} cannot be combined with "
                "load_in_8bit/load_in_4bit: choose at most one quantization"
            )
        if self.num_threads is not None and self.num_threads != "auto":
            if isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads <= 0:
                _fail("num_threads", self.num_threads, "expected 'auto', a positive integer or None")
        if self.decode_loop not in DECODE_LOOPS:
            _fail("decode_loop", self.decode_loop, "expected one of " + ", ".join(repr(d) for d in DECODE_LOOPS))
        if not isinstance(self.generation_kwargs, dict):
            _fail("generation_kwargs", self.generation_kwargs, "expected a dict of generate() keyword arguments")
        validate_generation_options(self.generation_kwargs, "HuggingFaceConfig.generation_kwargs", streaming=True)

    @property
    def quantization(self) -> str | None:
        """``"8bit"`` / ``"4bit"`` (bitsandbytes), ``"int8"`` / ``"int4"`` (``quantize_weights``) or ``None``."""
        if self.load_in_8bit:
            return "8bit"
        if self.load_in_4bit:
            return "4bit"
        if self.quantize_weights and self.quantize_weights != "auto":
            return self.quantize_weights
        return None  # "auto" is resolved against the model's source when it loads

    @property
    def greedy(self) -> bool:
        """True when this configuration decodes greedily (``do_sample=False`` or temperature 0)."""
        return not self.do_sample or self.temperature == 0

    def replace(self, **changes: Any) -> "HuggingFaceConfig":
        """A validated copy with ``changes`` applied (a field given a value is no longer unset)."""
        if "unset_fields" not in changes:
            set_now = {name for name, value in changes.items() if value is not None}
            changes["unset_fields"] = frozenset(self.unset_fields - set_now)
        return dataclasses.replace(self, **changes)

    def options(self) -> dict[str, Any]:
        """Every field as a keyword argument (``generation_kwargs`` copied), e.g. to rebuild an agent."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["generation_kwargs"] = dict(self.generation_kwargs)
        return values

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the constructor options."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, model: str, **kwargs: Any) -> "HuggingFaceConfig":
        """Build a configuration: known options set fields, the rest become generation kwargs."""
        return cls(model=model, **fields_from_kwargs(cls.field_names(), kwargs, "generation_kwargs"))


#: The default of every :class:`HuggingFaceConfig` field that has one (the one place they are written);
#: the generation fields read :data:`GENERATION_DEFAULTS` (what an unset field means without a model).
DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in dataclasses.fields(HuggingFaceConfig) if f.default is not dataclasses.MISSING},
    **GENERATION_DEFAULTS,
}


# --------------------------------------------------------------------------- TOML files


def find_config_file(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest ``config.toml`` in ``start`` (default: the current directory) or its parents."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read the ``[midori_ai_agent_base]`` section of a TOML file.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: the path is a directory, the file cannot be read, is not UTF-8 (TOML files
            are UTF-8 by definition), is not valid TOML or has no ``[midori_ai_agent_base]``
            table. Every message names the file.
    """
    path = Path(path)
    where = f"configuration file {str(path)!r}"
    if path.is_dir():
        inside = path / CONFIG_FILENAME
        hint = f" (it holds {str(inside)!r}: pass that)" if inside.is_file() else ""
        raise ConfigError(f"{where} is a directory, not a file: config_path expects a TOML file such as "
                          f"{CONFIG_FILENAME!r}{hint}")
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{where} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}) cannot be "
            "decoded; TOML files must be UTF-8, so save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    section = data.get(CONFIG_SECTION)
    if not isinstance(section, dict):
        raise ConfigError(
            f"{where} has no [{CONFIG_SECTION}] table; "
            f"put backend, model and options under [{CONFIG_SECTION}]"
        )
    return section


#: Backends of the Midori AI agent family: their tables may sit in ``[midori_ai_agent_base]``.
KNOWN_BACKENDS = ("huggingface", "openai", "langchain")
#: The one table allowed inside the base section or a backend's table.
NESTED_TABLES = ("reasoning_effort",)


def _check_tables(section: dict[str, Any], chosen_backend: str, source: Path | None) -> None:
    """Refuse tables the settings would otherwise drop silently, naming them."""
    where = f" in configuration file {str(source)!r}" if source is not None else ""
    backends = tuple(dict.fromkeys((chosen_backend, *KNOWN_BACKENDS)))
    for key, value in section.items():
        if isinstance(value, dict) and key not in NESTED_TABLES and key not in backends:
            raise ConfigError(
                f"table [{CONFIG_SECTION}.{key}]{where} is not allowed: the tables of [{CONFIG_SECTION}] are "
                f"reasoning_effort and those named after a backend ({', '.join(backends)}); put options as "
                f"plain keys of [{CONFIG_SECTION}] or [{CONFIG_SECTION}.{chosen_backend}] "
                "(e.g. repetition_penalty = 1.1)"
            )
    table = section.get(chosen_backend)
    if isinstance(table, dict):
        for key, value in table.items():
            if isinstance(value, dict) and key not in NESTED_TABLES:
                raise ConfigError(
                    f"table [{CONFIG_SECTION}.{chosen_backend}.{key}]{where} is not allowed: the only table inside "
                    f"[{CONFIG_SECTION}.{chosen_backend}] is reasoning_effort; put options as plain keys of "
                    f"[{CONFIG_SECTION}.{chosen_backend}] (e.g. repetition_penalty = 1.1)"
                )


@dataclass
class ResolvedAgentSettings:
    """The outcome of merging explicit arguments, a config file and defaults."""

    backend: str
    model: str | None
    api_key: str | None
    base_url: str | None
    reasoning_effort: Any
    kwargs: dict[str, Any]
    source: Path | None


def resolve_agent_settings(
    config_path: str | os.PathLike | None = None,
    backend: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    **kwargs: Any,
) -> ResolvedAgentSettings:
    """Merge explicit arguments over the TOML file over defaults.

    The base section ``[midori_ai_agent_base]`` gives ``backend``, ``model``, ``api_key``,
    ``base_url``, an optional ``reasoning_effort`` table and further scalar options; the
    sub-table named after the backend (``[midori_ai_agent_base.huggingface]``) overrides the
    base section for that backend. Without ``config_path`` the nearest ``config.toml`` in the
    current directory or its parents is used, if any.

    Tables other than ``reasoning_effort`` and backend tables are refused with a
    :class:`ConfigError` naming them (``[midori_ai_agent_base.huggingface.generation]`` would
    otherwise be dropped silently); backend tables are those of :data:`KNOWN_BACKENDS` and the
    chosen backend.
    """
    if config_path is not None and (not isinstance(config_path, (str, os.PathLike))
                                    or "\x00" in str(os.fspath(config_path))):
        raise ConfigError(refusal_message("config_path", config_path,
                                          "expected the path of a TOML file (str or os.PathLike, no NUL character), "
                                          f"or None to use the nearest {CONFIG_FILENAME}"))
    source = Path(config_path) if config_path is not None else find_config_file()
    section = read_config_file(source) if source is not None else {}

    chosen_backend = backend or section.get("backend") or "huggingface"
    if not isinstance(chosen_backend, str):
        raise ConfigError(refusal_message("backend", chosen_backend, "expected a backend name such as 'huggingface'")
                          + (f" (in configuration file {str(source)!r})" if source is not None else ""))
    _check_tables(section, chosen_backend, source)
    merged: dict[str, Any] = {}
    reasoning: dict[str, Any] | None = None
    for key, value in section.items():
        if key == "reasoning_effort" and isinstance(value, dict):
            reasoning = dict(value)
        elif not isinstance(value, dict):
            merged[key] = value
    backend_table = section.get(chosen_backend)
    if isinstance(backend_table, dict):
        for key, value in backend_table.items():
            if key == "reasoning_effort" and isinstance(value, dict):
                reasoning = {**(reasoning or {}), **value}
            elif not isinstance(value, dict):
                merged[key] = value
    merged.pop("backend", None)
    file_model = merged.pop("model", None)
    file_api_key = merged.pop("api_key", None)
    file_base_url = merged.pop("base_url", None)
    merged.update(kwargs)
    if "reasoning_effort" in merged:  # an explicit argument (any form) or a level name in the file
        reasoning = merged.pop("reasoning_effort")
    return ResolvedAgentSettings(
        backend=str(chosen_backend),
        model=model if model is not None else file_model,
        api_key=api_key if api_key is not None else file_api_key,
        base_url=base_url if base_url is not None else file_base_url,
        reasoning_effort=reasoning,
        kwargs=merged,
        source=source,
    )
