"""How the structured-output library was chosen: one candidate per process, the default model's tokenizer.

Install each candidate into a scratch directory and run this script with it on PYTHONPATH:

    pip install --no-deps --target /tmp/sg-llguidance "llguidance>=1.9,<1.10"
    pip install --no-deps --target /tmp/sg-xgrammar "xgrammar>=0.2,<0.3" "apache-tvm-ffi>=0.1.11"
    pip install --no-deps --target /tmp/sg-outlines-core "outlines-core>=0.2,<0.3"
    PYTHONPATH=/tmp/sg-llguidance python benchmarks/structured_libraries.py llguidance TOKENIZER_DIR

It prints the tokenizer set-up time, the compile time of a small JSON schema (median of 20; 3 for
outlines-core), and the time to compute one next-token mask along a valid 33-token answer.
"""
import json, sys, time, statistics
import torch
from transformers import AutoTokenizer

LIB = sys.argv[1]
TOK_DIR = sys.argv[2]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"],
          "additionalProperties": False}
TEXT = '{"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"]}'
tok = AutoTokenizer.from_pretrained(TOK_DIR)
ids = tok.encode(TEXT, add_special_tokens=False) + [tok.eos_token_id]
V = len(tok)
logits = torch.randn(1, 49152)
out = {"lib": LIB}

def timeit(fn, n=1):
    t = time.perf_counter(); r = None
    for _ in range(n): r = fn()
    return (time.perf_counter() - t) / n, r

if LIB == "llguidance":
    import llguidance, llguidance.hf
    from llguidance import LLMatcher
    out["version"] = llguidance.__version__ if hasattr(llguidance, "__version__") else "1.9.1"
    t, lltok = timeit(lambda: llguidance.hf.from_tokenizer(tok, n_vocab=49152))
    out["tokenizer_setup_s"] = t
    def compile_():
        g = LLMatcher.grammar_from_json_schema(SCHEMA)
        m = LLMatcher(lltok, g)
        assert not m.is_error(), m.get_error()
        return m
    compile_()
    t, _ = timeit(compile_, 20); out["compile_s"] = t
    mask = torch.full((1, (49152 + 31) // 32), -1, dtype=torch.int32)
    per = []
    for _ in range(5):
        m = compile_()
        for tid in ids:
            t0 = time.perf_counter()
            m.unsafe_compute_mask_ptr(mask[0].data_ptr(), mask.shape[1] * 4)
            per.append(time.perf_counter() - t0)
            assert m.consume_token(tid), (tid, m.get_error())
        assert m.is_stopped() or m.is_accepting()
    out["mask_us_median"] = statistics.median(per) * 1e6; out["mask_us_max"] = max(per) * 1e6
elif LIB == "xgrammar":
    import xgrammar as xgr
    out["version"] = xgr.__version__ if hasattr(xgr, "__version__") else "?"
    t, info = timeit(lambda: xgr.TokenizerInfo.from_huggingface(tok, vocab_size=49152)); out["tokenizer_setup_s"] = t
    comp = xgr.GrammarCompiler(info, cache_enabled=False)
    def compile_():
        return xgr.GrammarMatcher(comp.compile_json_schema(json.dumps(SCHEMA)))
    compile_()
    t, _ = timeit(compile_, 20); out["compile_s"] = t
    mask = xgr.allocate_token_bitmask(1, 49152)
    per = []
    for _ in range(5):
        m = compile_()
        for tid in ids:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            per.append(time.perf_counter() - t0)
            assert m.accept_token(tid), tid
        assert m.is_terminated()
    out["mask_us_median"] = statistics.median(per) * 1e6; out["mask_us_max"] = max(per) * 1e6
    t0 = time.perf_counter()
    for _ in range(100): xgr.apply_token_bitmask_inplace(logits, mask)
    out["apply_us"] = (time.perf_counter() - t0) / 100 * 1e6
elif LIB == "outlines-core":
    import outlines_core
    from outlines_core import Vocabulary, Index, Guide
    from outlines_core.json_schema import build_regex_from_schema
    def vocab():
        try:
            return Vocabulary.from_pretrained(TOK_DIR)
        except Exception as e:
            out["from_pretrained_local"] = f"fails: {type(e).__name__}: {str(e)[:120]}"
        mp = {}
        for t_, i in tok.get_vocab().items():
            if i == tok.eos_token_id: continue
            mp.setdefault(tok.convert_tokens_to_string([t_]), []).append(i)
        return Vocabulary(tok.eos_token_id, mp)
    t, voc = timeit(vocab); out["tokenizer_setup_s"] = t
    def compile_():
        return Guide(Index(build_regex_from_schema(json.dumps(SCHEMA)), voc))
    t, _ = timeit(compile_, 3); out["compile_s"] = t
    mask = torch.full((1, (49152 + 31) // 32), -1, dtype=torch.int32)
    per = []
    for _ in range(5):
        g = compile_()
        for tid in ids[:-1]:
            t0 = time.perf_counter()
            g.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
            per.append(time.perf_counter() - t0)
            g.advance(tid)
        assert g.is_finished()
    out["mask_us_median"] = statistics.median(per) * 1e6; out["mask_us_max"] = max(per) * 1e6
out["tokens"] = len(ids)
print(json.dumps(out))
