"""Messages of other libraries a user can do nothing about: collected into one explained line each,
or shown as the library writes them with ``MIDORI_HF_NB_THIRD_PARTY_LOGS=show``."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from midori_hf_nb import HuggingFaceLocalAgent, make_payload, third_party

from .conftest import run


def bnb_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("bitsandbytes")]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_an_8bit_answer_logs_no_cast_message_per_layer_and_keeps_one_explained_line(tiny_model, caplog, monkeypatch):
    monkeypatch.delenv(third_party.SWITCH, raising=False)
    agent = HuggingFaceLocalAgent(model=str(tiny_model), load_in_8bit=True, device="cpu", do_sample=False,
                                  max_new_tokens=4, progress=False)
    try:
        with caplog.at_level(logging.INFO):
            run(agent.invoke(make_payload("Hi")))
            assert not [r for r in bnb_records(caplog) if "MatMul8bitLt" in r.getMessage()]  # none reached a handler
            explained = [r for r in caplog.records if r.name == "midori_hf_nb.third_party"]
            assert len(explained) <= 1 and all(r.levelno == logging.INFO for r in explained)
            assert any("8-bit" in line and "float16" in line for line in third_party.notices())
            caplog.clear()
            monkeypatch.setenv(third_party.SWITCH, "show")  # the switch: the library's own messages again
            run(agent.invoke(make_payload("Hi")))
            shown = [r for r in bnb_records(caplog) if "MatMul8bitLt" in r.getMessage()]
            assert len(shown) >= 2  # one per layer and token: what the default setting collects
    finally:
        run(agent.unload_model())


def test_only_known_messages_are_collected_and_a_bad_switch_hides_nothing(caplog, monkeypatch):
    third_party.install()
    known = logging.getLogger("bitsandbytes.backends.cpu.ops")
    monkeypatch.delenv(third_party.SWITCH, raising=False)
    with caplog.at_level(logging.WARNING):
        known.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please pip install kernels",
                      "no module")
        known.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
    assert any("`kernels` package" in line for line in third_party.notices())
    monkeypatch.setenv(third_party.SWITCH, "loud")
    with pytest.raises(ValueError, match="MIDORI_HF_NB_THIRD_PARTY_LOGS='loud' is not allowed: expected one of "
                                         "collect, show"):
        third_party.mode()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        known.warning("Failed to load CPU gemm_4bit_forward again")
    assert len(caplog.records) == 1
