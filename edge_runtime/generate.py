"""The generation loop behind MiniCPMV.chat.

Prefill the prompt (the session reuses what the KV cache holds), then sample token by
token until an end-of-generation token, a stop string, the token limit, a full context
or a cancel. Along the way: the thought (thinking mode) is told apart from the answer,
a thinking budget closes the thought after N tokens (as llama.cpp's reasoning-budget
sampler forces its end sequence), a grammar applies to the answer only, and each
token's log-probabilities are recorded when asked for.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator

from minicpmv_edge.errors import Cancelled, InputError

from .grammar import Grammar
from .logprobs import MAX_TOP_LOGPROBS, LogprobRecorder
from .results import ChatResult, Piece, Timings, peak_rss_mb
from .sampling import Sampler, SamplingOptions
from .tools import ToolCall, ToolStream

REASONING_FORMATS = ("auto", "deepseek", "none")


@dataclass(frozen=True)
class GenerateOptions:
    sampling: SamplingOptions
    # "auto" / "deepseek": the thought goes to ChatResult.reasoning (Piece.reasoning when streaming);
    # "none": it stays in the text, unparsed (llama-server's names)
    reasoning_format: str = "auto"
    thinking_budget: int = -1  # -1: unlimited; N >= 0: after N thinking tokens the thought is closed
    budget_message: str = ""  # text put before the closing tag when the budget runs out
    grammar: Grammar | None = None  # applies to the answer (after the thought, in thinking mode)
    logprobs: bool = False
    top_logprobs: int = 0
    tools: tuple = ()  # tool definitions: calls in the answer are parsed out (tools.py)
    tool_format: str | None = None  # "json" | "xml"

    def validated(self) -> "GenerateOptions":
        if self.reasoning_format not in REASONING_FORMATS:
            raise InputError(f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}, "
                             f"got {self.reasoning_format!r}")
        b = self.thinking_budget
        if isinstance(b, bool) or not isinstance(b, int) or b < -1:
            raise InputError(f"thinking_budget must be -1 (unlimited) or a token count >= 0, got {b!r}")
        t = self.top_logprobs
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOP_LOGPROBS:
            raise InputError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {t!r}")
        if t and not self.logprobs:
            raise InputError("top_logprobs needs logprobs=True")
        if not isinstance(self.budget_message, str):
            raise InputError("the thinking budget message must be a string")
        return self


def generate(m, prompt: str, bitmaps: list, g: GenerateOptions, *, in_think: bool, tail: str = "") -> Iterator[Piece]:
    """`m` is the MiniCPMV; sets m.last_result when the generation ends (also when cancelled).
    `in_think`: the prompt leaves the model inside a thought (it ends with the opening tag);
    `tail`: the prompt's generation-only end, which the next turn's history does not repeat (session.py)."""
    fmt, model, ctx, s = m.format, m.model, m._ctx, g.sampling
    with m._lock:
        ctx.clear_abort()
        t0 = time.perf_counter()
        timings = Timings(load_ms=m.load_ms)
        thinking = in_think
        sampler = Sampler(model, s, ctx.n_ctx, grammar=g.grammar, grammar_active=not thinking)
        try:
            pre = m.session.prefill(prompt, bitmaps, tail=tail)
        except Cancelled:  # cancel() landed during prefill; the session has resynced its cache
            sampler.close()
            timings.peak_rss_mb = peak_rss_mb()
            m.last_result = ChatResult(text="", reasoning="", raw="", finish_reason="cancelled", timings=timings,
                                       usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            return
        except BaseException:
            sampler.close()
            raise
        timings.image_encode_ms = pre.image_encode_ms
        timings.prompt_tokens, timings.prompt_tokens_evaluated = pre.n_prompt, pre.n_evaluated
        rec = LogprobRecorder(model, g.top_logprobs) if g.logprobs else None
        out = _Text(fmt.think_close if thinking else None, g.reasoning_format != "none",
                    tuple(s.stop) + tuple(x for x in fmt.stop if not m._single_token(x)))
        all_logprobs: list = []
        tool_stream = ToolStream(g.tool_format, list(g.tools)) if g.tools else None
        calls: list[ToolCall] = []
        content: list[str] = []

        def route(pieces, last=False):
            """Answer text through the tool-call filter (when tools are on); the thought passes by."""
            for piece in pieces:
                if tool_stream is None or piece.reasoning:
                    yield piece
                    continue
                yield from _tool_pieces(tool_stream.feed(piece.text), calls, content)
            if last and tool_stream is not None:
                yield from _tool_pieces(tool_stream.flush(), calls, content)
        pending: list = []
        forced: deque[int] = deque()
        n_think = 0  # tokens sampled inside the thought
        budget_spent = False
        grammar_waits = False
        finish = "length"
        t_first = None
        limit = math.inf if s.max_tokens == -1 else s.max_tokens
        try:
            while timings.generated_tokens < limit:
                if ctx._abort.is_set():
                    finish = "cancelled"
                    break
                if out.thinking and not budget_spent and 0 <= g.thinking_budget <= n_think and out.complete:
                    forced.extend(_closing_tokens(model, out.text, fmt.think_close, g.budget_message))
                    budget_spent = True
                if grammar_waits and not forced:
                    sampler.activate_grammar()  # the grammar shapes the answer: from the token after the thought
                    grammar_waits = False
                was_forced = bool(forced)
                if was_forced:
                    tok = forced.popleft()
                    sampler.accept(tok)
                else:
                    if rec is not None:
                        rec.observe(ctx.logits())
                    tok = sampler.sample(ctx)
                    if tok < 0:  # a complete grammar that may not end (ignore_eos)
                        finish = "stop"
                        break
                if t_first is None:
                    t_first = time.perf_counter()
                    timings.prefill_ms, timings.ttft_ms = pre.ms, (t_first - t0) * 1e3
                timings.generated_tokens += 1
                if model.is_eog(tok) or tok in m._stop_ids:
                    finish = "stop"
                    break
                if rec is not None:
                    entry = rec.entry(tok)
                    all_logprobs.append(entry)
                    pending.append(entry)
                if out.thinking and not was_forced:
                    n_think += 1
                was_thinking = out.thinking
                hit = out.add(model.piece(tok))
                if was_thinking and not out.thinking:
                    grammar_waits = True
                for piece in route(out.pieces()):
                    if pending:
                        piece.logprobs, pending = pending, []
                    yield piece
                if hit:
                    finish = "stop"
                    break
                if ctx.n_past + 1 > ctx.n_ctx:  # no room to evaluate this token: the context is full
                    break
                try:
                    m.session.append_generated(tok)
                except Exception:
                    if ctx._abort.is_set():  # aborted from another thread mid-decode
                        finish = "cancelled"
                        break
                    raise
            if finish != "cancelled":
                for piece in route(out.flush(), last=True):
                    if pending:
                        piece.logprobs, pending = pending, []
                    yield piece
                if pending:
                    yield Piece("", out.thinking and out.split, logprobs=pending)
        finally:
            seed = None if s.temperature <= 0 else sampler.state.seed
            sampler.close()
        if t_first is not None:
            timings.decode_ms = (time.perf_counter() - t_first) * 1e3
        timings.peak_rss_mb = peak_rss_mb()
        reasoning, answer = out.result()
        if tool_stream is not None:
            answer = "".join(content).strip()
            if calls and finish == "stop":
                finish = "tool_calls"
        m.last_result = ChatResult(
            text=answer, reasoning=reasoning, raw=out.text, finish_reason=finish, timings=timings,
            usage={"prompt_tokens": pre.n_prompt, "completion_tokens": timings.generated_tokens,
                   "total_tokens": pre.n_prompt + timings.generated_tokens},
            seed=seed, logprobs=all_logprobs if rec is not None else None, tool_calls=calls)


def _tool_pieces(items, calls: list, content: list):
    for item in items:
        if isinstance(item, ToolCall):
            calls.append(item)
            yield Piece("", tool_call=item)
        elif item:
            content.append(item)
            yield Piece(item)


def _closing_tokens(model, thought: str, close_tag: str, message: str) -> list[int]:
    """What ends a thought in the template's own shape: `...\\n</think>\\n\\n`."""
    text = message + ("" if (thought + message).endswith("\n") else "\n") + close_tag + "\n\n"
    return model.tokenize(text)


class _Text:
    """Decoded output so far, and the pieces it is safe to emit: a stop string that may still be
    forming, or a closing thinking tag, is held back until it is complete or ruled out."""

    def __init__(self, close_tag: str | None, split: bool, stops: tuple[str, ...]):
        self.raw = bytearray()
        self.text = ""
        self.close_tag = close_tag
        self.thinking = close_tag is not None
        self.split = split
        self.stops = tuple(x for x in stops if x)
        self.complete = True  # the bytes so far end on a UTF-8 character boundary
        self._emitted = 0
        self._think_end = None  # where the answer starts in self.text
        self._answer_started = False
        self._queue: list[Piece] = []

    def add(self, piece: bytes) -> bool:
        """Append a token's bytes; True when a stop string has been produced (the text is cut before it)."""
        self.raw += piece
        try:
            text = self.raw.decode("utf-8")
            self.complete = True
        except UnicodeDecodeError as exc:
            if exc.start >= len(self.raw) - 3:  # a character cut at the end: wait for the next token
                self.complete = False
                return False
            text = self.raw.decode("utf-8", errors="ignore")
            self.complete = True
        self.text = text
        if self.thinking and self.close_tag in text:
            self.thinking = False
            self._think_end = text.index(self.close_tag) + len(self.close_tag)
        hit = next((x for x in self.stops if x in text), None)
        if hit:
            self.text = text[:text.index(hit)]
        self._advance(len(self.text) if hit else _safe_len(self.text, self.stops + (
            (self.close_tag,) if self.thinking else ())))
        return hit is not None

    def _advance(self, safe: int) -> None:
        while self._emitted < safe:
            end = self._think_end
            if self.split and end is not None and self._emitted < end:  # the rest of the thought, then skip the tag
                cut = end - len(self.close_tag)
                if self._emitted < cut:
                    self._push(self.text[self._emitted:cut], True)
                self._emitted = end
                continue
            self._push(self.text[self._emitted:safe], self.thinking)
            self._emitted = safe

    def _push(self, text: str, reasoning: bool) -> None:
        if not self.split:
            reasoning = False
        elif not reasoning and self._think_end is not None and not self._answer_started:
            text = text.lstrip("\n")  # the template's "\n\n" after </think> is not part of the answer
            if not text:
                return
        if not reasoning:
            self._answer_started = True
        if text:
            self._queue.append(Piece(text, reasoning))

    def pieces(self) -> list[Piece]:
        q, self._queue = self._queue, []
        return q

    def flush(self) -> list[Piece]:
        """At the end: text held back for a stop string that never came."""
        self._advance(len(self.text))
        return self.pieces()

    def result(self) -> tuple[str, str]:
        if not self.split or self.close_tag is None:
            return "", self.text
        if self._think_end is None:
            return self.text.strip(), ""
        return self.text[:self._think_end - len(self.close_tag)].strip(), self.text[self._think_end:].lstrip("\n")


def _safe_len(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be emitted without splitting a stop string that may be forming."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold

