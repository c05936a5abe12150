"""Memory readout: process and system memory, accelerator memory, and each loaded model.

``memory_readout()`` returns a :class:`MemoryReadout` (``_repr_html_`` shows a small table
with bars); ``.as_dict()`` gives plain values:

* ``process``: ``rss_bytes`` (resident now), ``peak_rss_bytes`` (high-water mark), ``vms_bytes``;
* ``system``: ``total_bytes``, ``available_bytes``, ``used_bytes``, ``percent``;
* ``cuda``: one dict per device (``device``, ``name``, ``allocated_bytes``, ``reserved_bytes``,
  ``total_bytes``), empty without CUDA;
* ``mps``: ``allocated_bytes`` and ``driver_allocated_bytes``, or None without Apple MPS;
* ``models``: the footprint of each model in the shared registry (``model``, ``parameters``,
  ``bytes``, ``dtype``, ``quantization``, ``device``, ``load_seconds``, ``references``);
* ``remote``: for ``memory_readout(agent)`` with an agent that is not local (any other Midori
  protocol agent), one entry (``model``, ``agent``) saying that its model's memory is not in this
  process: the readout shows a row "model: remote/unknown" instead of failing.

The table's "share" column divides each row by one stated denominator, named in its "share of"
column (``share_of`` in :meth:`MemoryReadout.to_frame`): the machine's memory for the process,
the system and every model; the device's memory for accelerator rows. A CPU model's share of
the process's resident memory is in its details.

It works on CPU-only machines. torch and the engine are *not* imported for a readout: if
they are not loaded yet, no model can be loaded and no accelerator memory is in use.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from .display import STYLE_BOX, STYLE_CELL, STYLE_FOOTER, STYLE_TABLE
from .escaping import NO_MATH_CLASS, css_percent, escape_html, to_text

#: The denominator of the share of process, system and model rows.
SYSTEM_MEMORY = "system memory"

#: What the readout says of an agent whose model is not in this process.
REMOTE_DETAIL = "remote/unknown: this agent's model memory is not in this process"


def format_bytes(count: float | int | None) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units); None, or anything that is not a number, -> ``''``."""
    if isinstance(count, bool) or not isinstance(count, (int, float)) or count != count:
        return ""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _peak_rss_bytes(info: Any) -> int:
    try:
        import resource
    except ImportError:  # Windows: psutil reports the peak working set
        return int(getattr(info, "peak_wset", info.rss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def process_memory() -> dict[str, int]:
    """Resident, peak resident and virtual memory of this process, in bytes."""
    info = psutil.Process(os.getpid()).memory_info()
    return {"rss_bytes": int(info.rss), "peak_rss_bytes": max(_peak_rss_bytes(info), int(info.rss)),
            "vms_bytes": int(info.vms)}


def system_memory() -> dict[str, Any]:
    """Total, available and used memory of the machine."""
    vm = psutil.virtual_memory()
    return {"total_bytes": int(vm.total), "available_bytes": int(vm.available),
            "used_bytes": int(vm.total - vm.available), "percent": float(vm.percent)}


def _loaded_name(module: str, *names: str) -> Any:
    """``module.name1.name2...`` if that module is imported and has those names yet, else None.

    A readout runs on the kernel's thread while another thread may be importing torch or the
    engine (a model's first load): such a module is in ``sys.modules`` before its names exist,
    and importing it here would wait for the whole import. The readout then reports what it
    would before the import: no accelerator memory and no model.
    """
    value = sys.modules.get(module)
    for name in names:
        value = getattr(value, name, None)
    return value


def cuda_memory() -> list[dict[str, Any]]:
    """Allocated, reserved and total memory per CUDA device ([] without CUDA or before torch is imported)."""
    torch = sys.modules.get("torch")
    is_available = _loaded_name("torch", "cuda", "is_available")
    if torch is None or is_available is None or not is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({
            "device": f"cuda:{index}",
            "name": props.name,
            "allocated_bytes": int(torch.cuda.memory_allocated(index)),
            "reserved_bytes": int(torch.cuda.memory_reserved(index)),
            "total_bytes": int(props.total_memory),
        })
    return devices


def mps_memory() -> dict[str, int] | None:
    """Apple MPS allocated and driver memory, or None where MPS is absent."""
    torch = sys.modules.get("torch")
    backend = _loaded_name("torch", "backends", "mps")
    if torch is None or getattr(backend, "is_available", None) is None or not backend.is_available():
        return None
    try:
        return {"allocated_bytes": int(torch.mps.current_allocated_memory()),
                "driver_allocated_bytes": int(torch.mps.driver_allocated_memory())}
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch builds
        return None


def model_footprints() -> list[dict[str, Any]]:
    """The footprint of each model loaded in the shared registry ([] before the engine is imported)."""
    registry = _loaded_name("midori_hf_nb.engine", "REGISTRY")
    if registry is None:
        return []
    models = []
    for lm in registry.loaded():
        footprint = dict(lm.footprint())
        footprint["references"] = registry.refcount(lm.spec.key)
        models.append(footprint)
    return models


@dataclass
class MemoryReadout:
    """A snapshot of memory use (see the module docstring for the keys)."""

    process: dict[str, int]
    system: dict[str, Any]
    cuda: list[dict[str, Any]] = field(default_factory=list)
    mps: dict[str, int] | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)
    remote: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain values: process, system, cuda, mps, models, remote, taken_at."""
        return {"process": dict(self.process), "system": dict(self.system), "cuda": [dict(d) for d in self.cuda],
                "mps": dict(self.mps) if self.mps is not None else None,
                "models": [dict(m) for m in self.models], "remote": [dict(r) for r in self.remote],
                "taken_at": self.taken_at}

    @property
    def rss_bytes(self) -> int:
        """Resident memory of the process."""
        return self.process["rss_bytes"]

    @property
    def model_bytes(self) -> int:
        """Bytes of the weights of every loaded model."""
        return sum(int(m.get("bytes") or 0) for m in self.models)

    def to_frame(self):
        """One row per measured quantity: ``section``, ``item``, ``bytes``, ``total_bytes`` (the
        denominator of the row's share), ``share_of`` (what that denominator is: "system memory"
        for the process, the system and models; "<device> memory" for an accelerator) and ``detail``."""
        import pandas as pd

        rows = self._rows()
        frame = pd.DataFrame(rows, columns=["section", "item", "bytes", "total_bytes", "share_of", "detail"])
        return frame.astype({"section": "string", "item": "string", "bytes": "Int64", "total_bytes": "Int64",
                             "share_of": "string", "detail": "string"})

    def _rows(self) -> list[dict[str, Any]]:
        system_total = self.system["total_bytes"]
        rows = [
            {"section": "process", "item": "resident (RSS)", "bytes": self.process["rss_bytes"],
             "total_bytes": system_total, "share_of": SYSTEM_MEMORY, "detail": ""},
            {"section": "process", "item": "peak resident", "bytes": self.process["peak_rss_bytes"],
             "total_bytes": system_total, "share_of": SYSTEM_MEMORY, "detail": ""},
            {"section": "system", "item": "used", "bytes": self.system["used_bytes"],
             "total_bytes": system_total, "share_of": SYSTEM_MEMORY, "detail": f"{self.system['percent']:.0f}% used"},
        ]
        for dev in self.cuda:
            for item, key in (("allocated", "allocated_bytes"), ("reserved", "reserved_bytes")):
                rows.append({"section": dev["device"], "item": item, "bytes": dev[key], "total_bytes": dev["total_bytes"],
                             "share_of": f"{dev['device']} memory", "detail": dev["name"]})
        if self.mps is not None:
            rows.append({"section": "mps", "item": "allocated", "bytes": self.mps["allocated_bytes"],
                         "total_bytes": None, "share_of": None, "detail": ""})
            rows.append({"section": "mps", "item": "driver allocated", "bytes": self.mps["driver_allocated_bytes"],
                         "total_bytes": None, "share_of": None, "detail": ""})
        rss = self.process["rss_bytes"]
        for model in self.models:
            detail = (f"{model.get('parameters', 0):,} parameters · {model.get('dtype')} · "
                      f"quantization {model.get('quantization')} · {model.get('device')} · "
                      f"{model.get('references', 1)} reference(s)")
            weights = model.get("bytes")
            if isinstance(weights, (int, float)) and not isinstance(weights, bool) and rss and model.get("device") == "cpu":
                detail += f" · {css_percent(weights / rss)} of the process's resident memory"
            rows.append({"section": "model", "item": to_text(model.get("model")), "bytes": weights,
                         "total_bytes": system_total, "share_of": SYSTEM_MEMORY, "detail": detail})
        for agent in self.remote:
            rows.append({"section": "model", "item": to_text(agent.get("model")), "bytes": None, "total_bytes": None,
                         "share_of": None,
                         "detail": REMOTE_DETAIL + (f" ({to_text(agent.get('agent'))})" if agent.get("agent") else "")
                         + (f", served at {to_text(agent.get('base_url'))}" if agent.get("base_url") else "")})
        return rows

    def _note(self) -> str:
        return "" if self.models or self.remote else "no model loaded"

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="{STYLE_CELL}">{h}</th>' for h in ("", "", "size", "share", "share of", "details"))
        body = []
        for row in self._rows():
            total, count = row["total_bytes"], row["bytes"]
            share = count / total if isinstance(count, (int, float)) and isinstance(total, (int, float)) and total \
                else None
            bar = ""
            if share is not None:
                bar = (f'<div style="width:8em;height:0.7em;background:rgba(128,128,128,0.2);display:inline-block">'
                       f'<div style="width:{css_percent(share)};height:100%;background:rgba(70,130,180,0.85)"></div>'
                       f"</div> {escape_html(css_percent(share))}")
            of = f"{row['share_of']} ({format_bytes(total)})" if share is not None and row["share_of"] else ""
            cells = [escape_html(row["section"]), escape_html(row["item"]), escape_html(format_bytes(count)), bar,
                     escape_html(of), escape_html(row["detail"])]
            body.append("<tr>" + "".join(f'<td style="{STYLE_CELL}">{c}</td>' for c in cells) + "</tr>")
        note = f'<div style="{STYLE_FOOTER}">{escape_html(self._note())}</div>' if self._note() else ""
        return (f'<div class="midori-memory {NO_MATH_CLASS}" style="{STYLE_BOX}"><table style="{STYLE_TABLE}">'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}</div>")

    def __repr__(self) -> str:
        lines = [f"{row['section']:>8}  {row['item']:<20} {format_bytes(row['bytes']):>10}  {row['detail']}".rstrip()
                 for row in self._rows()]
        if self._note():
            lines.append(self._note())
        return "\n".join(lines)


def remote_models(agent: Any) -> list[dict[str, Any]]:
    """``[{"model", "agent"}]`` (and ``"base_url"`` for a served agent) for an agent whose model is not
    in this process (any protocol agent but the local one); ``[]`` for a local agent (its model is
    in ``models`` while loaded) or None."""
    from .agent_calls import agent_model_name, is_local_agent

    if agent is None or is_local_agent(agent):
        return []
    entry = {"model": agent_model_name(agent), "agent": type(agent).__name__}
    base_url = getattr(agent, "base_url", None)  # a served agent's server (OpenAICompatibleAgent)
    if isinstance(base_url, str) and base_url:
        entry["base_url"] = base_url
    return [entry]


def memory_readout(agent: Any = None) -> MemoryReadout:
    """Take a :class:`MemoryReadout` now.

    ``agent``: optionally the agent the readout is about. A local agent's model is among
    ``models`` while it is loaded; any other protocol agent gets a ``remote`` entry (its model's
    memory is not in this process).
    """
    return MemoryReadout(process=process_memory(), system=system_memory(), cuda=cuda_memory(), mps=mps_memory(),
                         models=model_footprints(), remote=remote_models(agent))


__all__ = [
    "MemoryReadout",
    "SYSTEM_MEMORY",
    "cuda_memory",
    "format_bytes",
    "memory_readout",
    "model_footprints",
    "mps_memory",
    "process_memory",
    "remote_models",
    "system_memory",
]
