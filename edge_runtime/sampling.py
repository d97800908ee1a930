"""Sampling settings -> llama.cpp's sampler chain, built in llama.cpp's own order.

The chain mirrors `common_sampler_init` (llama.cpp common/sampling.cpp) with its
default sampler sequence: logit bias -> penalties (repeat, frequency, presence)
-> top-k -> typical-p -> top-p -> min-p -> temperature -> dist. A grammar is
applied the way `common_sampler_sample` applies it: sample with the chain, check
the chosen token against the grammar alone, and only when it is rejected resample
with the grammar applied first. `_grammar_resample` narrows that resampling to
the best-scoring candidates when the result provably cannot differ (see there).

Defaults: the model's `general.sampling.*` keys (llama.cpp's converter writes them
from generation_config.json, and llama.cpp's tools apply them the same way:
common/common.cpp `common_params_sampling_apply_model_defaults`), else the MiniCPM-V
model cards' chat() settings below.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from minicpmv_edge.errors import InputError

log = logging.getLogger(__name__)

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.h: a seed of this value means "pick a random one"
MAX_SEED = LLAMA_DEFAULT_SEED - 1

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


@dataclass(frozen=True)
class SamplingOptions:
    # model-card defaults (MiniCPM-V chat(): sampling=True, top_p 0.8, top_k 100, temperature 0.7,
    # repetition_penalty 1.05); a GGUF's general.sampling.* keys replace them (model_defaults)
    temperature: float = 0.7
    top_k: int = 100  # <= 0: the whole vocabulary
    top_p: float = 0.8  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    repeat_penalty: float = 1.05  # 1.0: off
    repeat_last_n: int = 64  # tokens the penalties look back over; 0: off, -1: the context size
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None or -1: random (llama.cpp's LLAMA_DEFAULT_SEED)
    max_tokens: int = 512  # -1: until the end of generation or a full context
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -inf bans a token
    ignore_eos: bool = False

    def validated(self) -> "SamplingOptions":
        def finite(name, lo=None, hi=None, lo_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise InputError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise InputError(f"{name} must be <= {hi}, got {v!r}")

        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")

        finite("temperature", 0)
        finite("top_p", 0, 1)
        finite("min_p", 0, 1)
        finite("typical_p", 0, 1, lo_open=True)
        finite("repeat_penalty", 0, lo_open=True)
        finite("presence_penalty")
        finite("frequency_penalty")
        integer("top_k", 0)
        integer("repeat_last_n", -1)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or \
                not (self.max_tokens >= 1 or self.max_tokens == -1):
            raise InputError(f"max_tokens must be >= 1, or -1 for no limit but the context, got {self.max_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -1 <= self.seed <= MAX_SEED):
            raise InputError(f"seed must be -1 (random) or an integer in [0, {MAX_SEED}], got {self.seed!r}")
        if not all(isinstance(s, str) for s in self.stop):
            raise InputError("stop must be a string or a list of strings")
        for tok, bias in self.logit_bias:
            if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
                raise InputError(f"logit_bias: token {tok!r} is not a token id")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or math.isnan(bias) or bias == math.inf:
                raise InputError(f"logit_bias: the bias of token {tok} must be a number or -inf, got {bias!r}")
        return self

    @property
    def random_seed(self) -> bool:
        return self.seed is None or self.seed == -1


OPTION_NAMES = tuple(f.name for f in fields(SamplingOptions))

# general.sampling.* -> our option, parsed as llama.cpp parses them (strtol / strtof of the value's text)
GGUF_SAMPLING_KEYS = {
    "general.sampling.top_k": ("top_k", int),
    "general.sampling.top_p": ("top_p", float),
    "general.sampling.min_p": ("min_p", float),
    "general.sampling.temp": ("temperature", float),
    "general.sampling.penalty_last_n": ("repeat_last_n", int),
    "general.sampling.penalty_repeat": ("repeat_penalty", float),
}
# keys llama.cpp may carry for samplers we do not build; a model that sets them is warned about
_UNSUPPORTED_GGUF_KEYS = ("general.sampling.sequence", "general.sampling.xtc_probability",
                          "general.sampling.mirostat")


def model_defaults(meta) -> SamplingOptions:
    """The model's own sampling defaults. `meta(key) -> str | None` reads GGUF metadata."""
    found = {}
    for key, (name, kind) in GGUF_SAMPLING_KEYS.items():
        raw = meta(key)
        if raw is None:
            continue
        try:
            found[name] = kind(float(raw)) if kind is int else float(raw)
        except ValueError:
            log.warning("ignoring %s = %r: not a number", key, raw)
    for key in _UNSUPPORTED_GGUF_KEYS:
        raw = meta(key)
        if raw not in (None, "", "0"):
            log.warning("the model sets %s = %s; minicpmv-edge does not build that sampler", key, raw)
    try:
        return replace(SamplingOptions(), **found).validated()
    except InputError as exc:
        log.warning("ignoring the model's sampling defaults: %s", exc)
        return SamplingOptions()


def eog_tokens(model) -> list[int]:
    """Every end-of-generation token of the vocabulary (computed once per loaded model)."""
    ids = getattr(model, "_eog_ids", None)
    if ids is None:
        ids = model._eog_ids = [t for t in range(model.n_vocab) if model.is_eog(t)]
    return ids


@dataclass
class SamplerState:
    """What the chain chose for one step, for callers that report it."""

    seed: int = LLAMA_DEFAULT_SEED
    grammar_resamples: int = 0  # steps where the chain's first choice broke the grammar
    grammar_full_passes: int = 0  # of those, steps that had to run the grammar over the whole vocabulary
    extra: dict = field(default_factory=dict)


class Sampler:
    """One generation's sampler chain (+ optional grammar sampler). Not thread-safe."""

    # candidates handed to the grammar before falling back to the whole vocabulary (see _grammar_resample)
    GRAMMAR_WINDOW = 256

    def __init__(self, model, opts: SamplingOptions, n_ctx: int, grammar=None, grammar_active: bool = True):
        """`grammar`: a grammar.Grammar; `grammar_active=False` holds it back until activate_grammar()
        (thinking: the grammar applies to the answer after the thought)."""
        import llama_cpp as L

        self._L = L
        self.model = model
        self.opts = opts
        self.state = SamplerState()
        n_vocab = model.n_vocab
        for tok, _ in opts.logit_bias:
            if tok >= n_vocab:
                raise InputError(f"logit_bias: token {tok} is outside the vocabulary (0..{n_vocab - 1})")
        # without a grammar one chain does everything inside llama_sampler_sample (C speed); with one,
        # `pre` (bias, penalties) and `post` (truncation, temperature, choice) are applied separately,
        # so that the grammar can be put between them when it rejects the chain's first choice
        new = lambda: L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())  # noqa: E731
        self.pre = new()
        self.post = new() if grammar is not None else None
        self.grammar = None
        self.grammar_active = False
        self._cur = None
        # greedy with at most a logit bias is an argmax over the logits: done in numpy it skips llama.cpp's
        # per-token candidate array (n_vocab entries, ~0.3 ms at 248k tokens), the largest per-token cost
        # outside the decode on a fast GPU; same first-maximum rule as llama_sampler_greedy
        penalties = opts.repeat_penalty != 1.0 or opts.frequency_penalty or opts.presence_penalty
        self.fast_greedy = opts.temperature <= 0 and not penalties and grammar is None
        self._bias = None
        try:
            self._build(opts, n_vocab, n_ctx)
            if grammar is not None:
                self.grammar = grammar.sampler(model)
                self.grammar_active = bool(grammar_active)
        except BaseException:
            self.close()
            raise

    # --- chain ------------------------------------------------------------------
    def _build(self, o: SamplingOptions, n_vocab: int, n_ctx: int) -> None:
        L = self._L
        pre = lambda s: L.llama_sampler_chain_add(self.pre, s)  # noqa: E731
        post = lambda s: L.llama_sampler_chain_add(self.post or self.pre, s)  # noqa: E731
        bias = list(o.logit_bias)
        if o.ignore_eos:  # as llama.cpp: every end-of-generation token gets -inf (common.cpp logit_bias_eog)
            bias += [(t, -math.inf) for t in eog_tokens(self.model)]
        if bias:
            arr = (L.llama_logit_bias * len(bias))(*[L.llama_logit_bias(t, b) for t, b in bias])
            pre(L.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))
            self._bias = (np.array([t for t, _ in bias], np.int64), np.array([b for _, b in bias], np.float32),
                          np.empty(n_vocab, np.float32))
        last_n = n_ctx if o.repeat_last_n == -1 else o.repeat_last_n
        if last_n and (o.repeat_penalty != 1.0 or o.frequency_penalty or o.presence_penalty):
            pre(L.llama_sampler_init_penalties(n_vocab, last_n, o.repeat_penalty, o.frequency_penalty,
                                               o.presence_penalty))
        if o.temperature <= 0:
            post(L.llama_sampler_init_greedy())
            return
        post(L.llama_sampler_init_top_k(o.top_k))  # k <= 0 keeps everything
        post(L.llama_sampler_init_typical(o.typical_p, 1))
        post(L.llama_sampler_init_top_p(o.top_p, 1))
        post(L.llama_sampler_init_min_p(o.min_p, 1))
        post(L.llama_sampler_init_temp(o.temperature))
        post(L.llama_sampler_init_dist(LLAMA_DEFAULT_SEED if o.random_seed else o.seed))
        self.state.seed = int(L.llama_sampler_get_seed(self.post or self.pre))

    # --- sampling ---------------------------------------------------------------
    def sample(self, ctx) -> int:
        """Choose the next token from the context's last logits and record it (penalties, grammar).
        -1: no token is possible (a complete grammar whose end tokens are banned by ignore_eos)."""
        L = self._L
        if self.fast_greedy:
            logits = ctx.logits_view()  # llama.cpp's buffer (a pool slot: its copy of its row)
            if self._bias is not None:  # as llama_sampler_logit_bias: logit += bias (float32)
                ids, values, buf = self._bias
                np.copyto(buf, logits)
                np.add.at(buf, ids, values)
                logits = buf
            tok = int(np.argmax(logits))
            L.llama_sampler_accept(self.pre, tok)
            return tok
        if self.post is None and ctx.direct_sampling:
            return int(L.llama_sampler_sample(self.pre, ctx.ptr, -1))  # applies and accepts
        # the same chain over a token array made from the context's logits (a pool slot's copy of its
        # row: edge_runtime/slots.py); llama_sampler_sample builds exactly this array internally
        cur, arr = self._fill(ctx)
        L.llama_sampler_apply(self.pre, ctypes.byref(arr))
        if self.post is None:
            tok = int(arr.data[arr.selected].id)
            self.accept(tok)
            return tok
        adjusted = cur["logit"].copy() if self.grammar_active else None
        L.llama_sampler_apply(self.post, ctypes.byref(arr))
        tok = int(arr.data[arr.selected].id)
        if self.grammar_active and not self._grammar_allows(tok):
            tok = self._grammar_resample(adjusted)
            if tok < 0:
                return tok
        self.accept(tok)
        # llama.cpp aborts the process when a grammar is handed a token it cannot take (an end-of-
        # generation token before the grammar is complete, a piece it rejects): only the tokens it
        # allowed reach it, never forced ones
        if self.grammar_active and not self.model.is_eog(tok):
            L.llama_sampler_accept(self.grammar, tok)
        return tok

    def accept(self, tok: int) -> None:
        """Record a token in the chain's history (penalties); sample() does it, call it for forced tokens."""
        L = self._L
        L.llama_sampler_accept(self.pre, tok)
        if self.post is not None:
            L.llama_sampler_accept(self.post, tok)

    def activate_grammar(self) -> None:
        if self.grammar is not None:
            self.grammar_active = True

    def _fill(self, ctx):
        n = self.model.n_vocab
        if self._cur is None:
            self._cur = np.zeros(n, dtype=_TOKEN_DATA)
            self._ids = np.arange(n, dtype=np.int32)
        cur = self._cur
        cur["id"] = self._ids
        cur["logit"] = ctx.logits_view()
        cur["p"] = 0.0
        return cur, self._array(cur)

    def _array(self, cur: np.ndarray):
        L = self._L
        return L.llama_token_data_array(cur.ctypes.data_as(L.llama_token_data_p), len(cur), -1, False)

    def _grammar_allows(self, tok: int) -> bool:
        L = self._L
        one = L.llama_token_data(tok, 1.0, 0.0)
        arr = L.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return arr.data[0].logit != -math.inf

    def _grammar_resample(self, adjusted: np.ndarray) -> int:
        """common_sampler_sample's resampling: grammar first, then the chain, on the adjusted logits.

        The grammar's cost grows with the candidates it must check (every token piece against every
        grammar stack), so it first sees only the GRAMMAR_WINDOW best candidates. That gives exactly
        the token the whole vocabulary would give when the chain can only pick among the best allowed
        ones: greedy needs one allowed candidate in the window; top-k sampling needs k of them (the
        k best allowed tokens are then all in the window, and top-p / min-p / typical / temperature
        act on those k alone). Otherwise (top_k 0, or too few allowed) the grammar sees every token."""
        L = self._L
        self.state.grammar_resamples += 1
        o = self.opts
        need = 1 if o.temperature <= 0 else o.top_k
        if 0 < need <= self.GRAMMAR_WINDOW < len(adjusted):
            top = np.argpartition(adjusted, -self.GRAMMAR_WINDOW)[-self.GRAMMAR_WINDOW:]
            top = top[np.isfinite(adjusted[top])]
            win = np.zeros(len(top), dtype=_TOKEN_DATA)
            win["id"], win["logit"] = top, adjusted[top]
            arr = self._array(win)
            L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
            if int(np.isfinite(win["logit"]).sum()) >= need:
                L.llama_sampler_apply(self.post, ctypes.byref(arr))
                return int(arr.data[arr.selected].id)
        self.state.grammar_full_passes += 1
        cur = self._cur
        cur["id"], cur["logit"], cur["p"] = self._ids, adjusted, 0.0
        arr = self._array(cur)
        L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        if not np.isfinite(cur["logit"]).any():
            return -1  # nothing fits: the grammar is complete and every end token is banned (ignore_eos)
        L.llama_sampler_apply(self.post, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        L = self._L
        for name in ("pre", "post", "grammar"):
            p = getattr(self, name, None)
            if p:
                L.llama_sampler_free(p)
                setattr(self, name, None)

    def __del__(self):
        self.close()
