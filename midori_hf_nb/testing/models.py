"""Models for tests and demos that need exact output from a real generation.

:class:`ScriptedOutput` is a logits processor that forces the tokens of given texts, so the
whole path (``generate``, streaming, decoding, parsing) runs for real while the output is
known. :func:`build_tiny_model` saves a small randomly initialised Llama model with a real
tokenizer to a folder, for fast tests of the mechanics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LogitsProcessor

#: A Hermes/Qwen-style chat template that renders ``tools=`` and tool messages.
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{%- endif %}"
    "You may call functions. Signatures:\n<tools>\n"
    "{%- for tool in tools %}{{ tool | tojson }}\n{%- endfor %}</tools>\n"
    "Return calls as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}<|im_start|>assistant\n"
    "{{ message['content'] }}{%- for call in message['tool_calls'] %}<tool_call>"
    "{\"name\": \"{{ call['function']['name'] }}\", \"arguments\": {{ call['function']['arguments'] | tojson }}}"
    "</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message['role'] == 'tool' %}<|im_start|>user\n<tool_response>{{ message['content'] }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


class ScriptedOutput(LogitsProcessor):
    """Force each generation to produce the next text of ``texts`` followed by end of sequence.

    One instance can serve several consecutive generations (a tool loop): a new generation is
    recognised when the input is not the previous input plus one token. After the last script
    the last text repeats. Every row of a batch gets the same text. ``prompts`` keeps the
    prompt token ids (first row) of each generation seen, to check what reached the model.
    """

    def __init__(self, tokenizer: Any, texts: str | Sequence[str], eos_token_id: int | None = None) -> None:
        self.scripts = [texts] if isinstance(texts, str) else list(texts)
        if not self.scripts:
            raise ValueError("ScriptedOutput needs at least one text")
        self.token_ids = [tokenizer.encode(t, add_special_tokens=False) for t in self.scripts]
        self.eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
        self.generation = -1
        self._start = 0
        self._last_len = -2
        self._last_ids: torch.Tensor | None = None
        self.prompts: list[list[int]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        previous = self._last_ids
        continues = length == self._last_len + 1 and previous is not None and torch.equal(input_ids[0, :-1], previous)
        if not continues:  # a new prompt (not the last one plus one token): the next script starts
            self.generation += 1
            self._start = length
            self.prompts.append(input_ids[0].tolist())
        self._last_len = length
        self._last_ids = input_ids[0].detach().clone()
        script = self.token_ids[min(self.generation, len(self.token_ids) - 1)]
        step = length - self._start
        target = script[step] if step < len(script) else self.eos
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target] = 0.0
        return forced


#: Block sizes of bitsandbytes' CPU kernels that a quantized layer's shape must fit: on CPUs with
#: AVX512-BF16, 4-bit weights are repacked in blocks of ``BNB_CPU_BLOCK_N`` output rows and the
#: absmax reshaped by ``in_features // blocksize`` (``bitsandbytes.functional._convert_weight_packed_for_cpu``),
#: with the 4-bit quantization blocksize ``BNB_4BIT_BLOCKSIZE`` on CPU.
BNB_CPU_BLOCK_N = 32
BNB_4BIT_BLOCKSIZE = 64

#: The tiny model's default sizes: every linear layer's in- and out-features are multiples of
#: the blocks above (hidden 128, intermediate 256, two heads of 64, one key/value head).
TINY_HIDDEN_SIZE = 128
TINY_HEAD_DIM = 64


def build_tiny_model(
    folder: str | os.PathLike,
    tokenizer_source: str | os.PathLike,
    *,
    chat_template: str | None = None,
    hidden_size: int = TINY_HIDDEN_SIZE,
    layers: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 2048,
) -> Path:
    """Save a randomly initialised small Llama model with the tokenizer of ``tokenizer_source``.

    The layers have shapes that real kernels accept: ``hidden_size`` (default 128, a multiple of
    64) gives heads of 64, an intermediate size of twice the hidden size and key/value
    projections of 64 outputs, so every linear layer fits bitsandbytes' CPU block sizes
    (:data:`BNB_CPU_BLOCK_N` output rows, :data:`BNB_4BIT_BLOCKSIZE` input columns) and the
    4- and 8-bit kernels of every CPU.
    ``chat_template`` replaces the tokenizer's template (``""`` removes it, for the plain fallback).
    Returns the folder, loadable as a model source.
    """
    if hidden_size % TINY_HEAD_DIM:
        raise ValueError(f"hidden_size={hidden_size!r} is not allowed: expected a multiple of {TINY_HEAD_DIM}")
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if chat_template is not None:
        tokenizer.chat_template = chat_template or None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // TINY_HEAD_DIM,
        num_key_value_heads=1,
        head_dim=TINY_HEAD_DIM,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if chat_template == "":
        for name in ("chat_template.jinja", "chat_template.json"):
            (folder / name).unlink(missing_ok=True)
    return folder
