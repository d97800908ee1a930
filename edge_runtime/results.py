"""What a chat returns: the result, its streamed pieces, and timings."""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass, field


@dataclass
class Timings:
    load_ms: float = 0.0
    image_encode_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    prefill_ms: float = 0.0
    generated_tokens: int = 0
    decode_ms: float = 0.0
    ttft_ms: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens_evaluated / (self.prefill_ms / 1e3) if self.prefill_ms > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return (self.generated_tokens - 1) / (self.decode_ms / 1e3) if self.decode_ms > 0 and self.generated_tokens > 1 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(prefill_tok_s=round(self.prefill_tok_s, 2), decode_tok_s=round(self.decode_tok_s, 2))
        return d


@dataclass
class Piece:
    """A streamed piece of the reply; `reasoning` marks thinking text. `logprobs`: the tokens
    (logprobs.TokenLogprob) completed since the previous piece, when logprobs were asked for;
    `tool_call`: a complete tool call (tools.ToolCall), with `text` empty."""

    text: str
    reasoning: bool = False
    logprobs: list | None = None
    tool_call: object | None = None


@dataclass
class ChatResult:
    text: str  # the answer (thinking and tool calls removed)
    reasoning: str  # the thinking part ("" when thinking is off)
    raw: str  # everything the model generated
    finish_reason: str  # "stop" | "length" | "cancelled" | "tool_calls"
    timings: Timings
    usage: dict
    seed: int | None = None  # the seed the sampler used (None: greedy, no randomness)
    logprobs: list | None = None  # one logprobs.TokenLogprob per generated token, when asked for
    tool_calls: list = field(default_factory=list)  # tools.ToolCall, in order

    def __str__(self) -> str:
        return self.text


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
