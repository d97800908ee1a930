"""Log-probabilities of generated tokens, as llama-server reports them by default.

The values are a log-softmax of llama.cpp's raw logits for the step (before logit
bias, penalties, grammar, truncation and temperature: llama-server's default,
`post_sampling_probs: false`), computed in float64 from the float32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    bytes: list[int]
    logprob: float

    def as_openai(self) -> dict:
        return {"token": self.token, "logprob": self.logprob, "bytes": self.bytes}


@dataclass(frozen=True)
class TokenLogprob(TopLogprob):
    top: list[TopLogprob] = field(default_factory=list)

    def as_openai(self) -> dict:
        return {**super().as_openai(), "top_logprobs": [t.as_openai() for t in self.top]}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class LogprobRecorder:
    """Per generation: reads a step's logits, then names the chosen token and its `n` best rivals."""

    def __init__(self, model, n_top: int):
        self.model = model
        self.n_top = n_top
        self._step: np.ndarray | None = None

    def observe(self, logits: np.ndarray) -> None:
        self._step = log_softmax(logits)

    def entry(self, token: int) -> TokenLogprob:
        lp = self._step
        self._step = None
        if lp is None:  # a token we forced (thinking budget): it had no choice
            return TokenLogprob(token, *self._text(token), 0.0, [])
        top: list[TopLogprob] = []
        if self.n_top:
            idx = np.argpartition(lp, -self.n_top)[-self.n_top:]
            idx = idx[np.argsort(-lp[idx], kind="stable")]
            top = [TopLogprob(int(t), *self._text(int(t)), float(lp[t])) for t in idx]
        return TokenLogprob(token, *self._text(token), float(lp[token]), top)

    def _text(self, token: int) -> tuple[str, list[int]]:
        b = self.model.piece(token)
        return b.decode("utf-8", "replace"), list(b)
