"""What a generation produced (:class:`GenerationResult`) and how a sequence's end is named
(its finish reason, and the cut the repetition guard makes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .repetition import closing_finish, first_loop_end, loop_guard

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import GenerationSettings


@dataclass
class GenerationResult:
    """What one sequence's generation produced."""

    token_ids: list[int]
    text: str
    finish_reason: str  #: "stop", "length", "cancelled" or "repetition" (the repetition guard ended a loop)
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    seconds: float
    #: "engine" (the engine's own decode loop) or "generate" (``model.generate``)
    decode_path: str = "generate"
    #: why ``model.generate`` ran instead of the engine's loop (None on the engine's path)
    decode_path_reason: str | None = None
    #: when the first token came (``time.perf_counter()``), to time it from an earlier moment
    first_token_at: float | None = None
    #: prompt tokens taken from a kept KV cache of the same owner's previous turn (not prefilled)
    reused_prompt_tokens: int = 0
    #: the most sequences that decoded together with this one (1: it ran alone)
    shared_rows: int = 1
    #: under a constraint, when the repetition guard ended a loop: the tokens of the grammar's shortest
    #: completion written after it, so the answer is complete (None: the guard closed nothing)
    closing_tokens: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens per second after the first token (the decode phase)."""
        if self.time_to_first_token is None or self.completion_tokens < 2:
            return None
        decode = self.seconds - self.time_to_first_token
        return (self.completion_tokens - 1) / decode if decode > 0 else None



def finish_reason(tokens: list[int], eos: frozenset[int], max_new_tokens: int, cancelled: bool,
                   repeated: bool = False) -> str:
    if tokens and tokens[-1] in eos:
        return "stop"
    if repeated:
        return "repetition"
    if cancelled:
        return "cancelled"
    return "length" if len(tokens) >= max_new_tokens else "stop"


def finish_tokens(tokens: list[int], eos: frozenset[int], settings: GenerationSettings, cancelled: bool,
                  closing: Any = None) -> tuple[list[int], str, int | None]:
    """A sequence's tokens (cut where the repetition guard noticed a loop, which drops the padding
    ``generate`` adds after a row it stopped), its finish reason and its ``closing_tokens`` (under
    a constraint the guard runs in the constraint's processor, whose ``closing`` is given)."""
    closed = closing_finish(tokens, closing, eos)
    if closed is not None:
        return closed[0], "repetition", closed[1]
    loop_end = first_loop_end(tokens, loop_guard(settings))
    if loop_end is not None:
        return tokens[:loop_end], "repetition", None
    return tokens, finish_reason(tokens, eos, settings.max_new_tokens, cancelled), None


def join_results(parts: list[GenerationResult], text: str, finish: str) -> GenerationResult:
    """One result for a generation that ran in several parts (a stream paused and continued):
    the tokens of every part, ``text`` (decoded from all of them) and ``finish``; the timing of
    the first token from the first part, the seconds of generation summed (pauses left out)."""
    first = parts[0]
    tokens = [token for part in parts for token in part.token_ids]
    return GenerationResult(tokens, text, finish, first.prompt_tokens, len(tokens), first.time_to_first_token,
                            sum(part.seconds for part in parts), parts[-1].decode_path,
                            next((p.decode_path_reason for p in parts if p.decode_path_reason), None),
                            first.first_token_at, first.reused_prompt_tokens, max(p.shared_rows for p in parts),
                            parts[-1].closing_tokens)
