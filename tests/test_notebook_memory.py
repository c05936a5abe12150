"""Memory readout: works on CPU-only machines, lists loaded models, renders as escaped HTML."""

from __future__ import annotations

import psutil

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent
from midori_hf_nb.notebook import MemoryReadout, memory_readout
from midori_hf_nb.notebook.memory import format_bytes

from midori_hf_nb.testing import ScriptedAgent

from .conftest import run


def test_readout_keys_on_cpu():
    readout = memory_readout()
    data = readout.as_dict()
    assert set(data) == {"process", "system", "cuda", "mps", "models", "remote", "taken_at"}
    assert data["remote"] == []
    assert set(data["process"]) == {"rss_bytes", "peak_rss_bytes", "vms_bytes"}
    assert set(data["system"]) == {"total_bytes", "available_bytes", "used_bytes", "percent"}
    assert 0 < data["process"]["rss_bytes"] <= data["process"]["peak_rss_bytes"]
    assert data["system"]["total_bytes"] == psutil.virtual_memory().total
    import torch

    if not torch.cuda.is_available():
        assert data["cuda"] == []
    if not torch.backends.mps.is_available():
        assert data["mps"] is None
    assert isinstance(readout._repr_html_(), str) and "resident" in readout._repr_html_()


def test_loaded_model_footprint_appears_and_goes(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", torch_dtype="float32", progress=False)
    run(agent.load())
    try:
        key_name = agent.loaded_model.spec.source.name
        readout = memory_readout()
        mine = [m for m in readout.models if m["model"] == key_name]
        assert len(mine) == 1
        footprint = mine[0]
        model = agent.loaded_model.model
        assert footprint["parameters"] == sum(p.numel() for p in model.parameters())
        assert footprint["bytes"] >= footprint["parameters"] * 4  # float32 weights
        assert footprint["dtype"] == "float32" and footprint["quantization"] == "none"
        assert footprint["device"] == "cpu" and footprint["references"] == 1
        assert readout.model_bytes >= footprint["bytes"]
        html = readout._repr_html_()
        assert "model" in html and format_bytes(footprint["bytes"]) in html
        frame = readout.to_frame()
        assert (frame["section"] == "model").sum() == len(readout.models)
    finally:
        run(agent.unload_model())
    after = memory_readout()
    assert not [m for m in after.models if m["model"] == key_name]


def test_html_escapes_model_names():
    readout = MemoryReadout(process={"rss_bytes": 10, "peak_rss_bytes": 10, "vms_bytes": 10},
                            system={"total_bytes": 100, "available_bytes": 50, "used_bytes": 50, "percent": 50.0},
                            models=[{"model": "<img src=x onerror=alert(1)>", "parameters": 1, "bytes": 4,
                                     "dtype": "float32", "quantization": "none", "device": "cpu"}])
    html = readout._repr_html_()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "no model loaded" in repr(MemoryReadout(process=readout.process, system=readout.system))


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(None) == ""


def test_an_agent_that_is_not_local_is_listed_as_remote_not_a_failure():
    readout = memory_readout(ScriptedAgent("x", model="<b>far-away</b>"))
    assert readout.remote == [{"model": "<b>far-away</b>", "agent": "ScriptedAgent"}]
    rows = readout.to_frame()
    remote = rows[rows["item"] == "<b>far-away</b>"]
    assert remote["section"].tolist() == ["model"] and remote["bytes"].isna().all()
    assert "remote/unknown" in remote["detail"].iloc[0] and "not in this process" in remote["detail"].iloc[0]
    html = readout._repr_html_()
    assert "&lt;b&gt;far-away&lt;/b&gt;" in html and "<b>" not in html and "remote/unknown" in html
    assert "no model loaded" not in html and "remote/unknown" in repr(readout)
    assert readout.model_bytes == sum(m["bytes"] for m in readout.models)  # nothing counted for it


def test_a_local_agent_adds_no_remote_row():
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL)  # not loaded: nothing to list, and nothing loads
    readout = memory_readout(agent)
    assert readout.remote == [] and not agent.is_loaded


def test_every_share_states_its_denominator_and_models_share_the_process_rows_one():
    readout = MemoryReadout(process={"rss_bytes": 400, "peak_rss_bytes": 500, "vms_bytes": 900},
                            system={"total_bytes": 1000, "available_bytes": 500, "used_bytes": 500, "percent": 50.0},
                            cuda=[{"device": "cuda:0", "name": "GPU", "allocated_bytes": 30, "reserved_bytes": 60,
                                   "total_bytes": 80}],
                            models=[{"model": "m", "parameters": 1, "bytes": 100, "dtype": "float32",
                                     "quantization": "none", "device": "cpu"}])
    frame = readout.to_frame()
    by_item = frame.set_index("item")
    for item in ("resident (RSS)", "peak resident", "used", "m"):  # one denominator: the machine's memory
        assert by_item.loc[item, "total_bytes"] == 1000 and by_item.loc[item, "share_of"] == "system memory"
    assert set(frame[frame["section"] == "cuda:0"]["share_of"]) == {"cuda:0 memory"}
    assert set(frame[frame["section"] == "cuda:0"]["total_bytes"]) == {80}
    assert "25.0% of the process's resident memory" in by_item.loc["m", "detail"]
    html = readout._repr_html_()
    assert "<th" in html and ">share of</th>" in html
    assert html.count("system memory (1000 B)") == 4 and html.count("cuda:0 memory (80 B)") == 2
    assert "</div> 10.0%" in html and "</div> 25.0%" not in html  # the model: 100 of the machine's 1000, not of the RSS
