"""Reference drivers for the sampling tests: llama.cpp called straight through llama.h, without our runtime."""

from __future__ import annotations

import ctypes

import numpy as np


class ByHand:
    """A text-only prompt evaluated by hand; then `step(choose)` generates one token at a time."""

    def __init__(self, text_path: str, prompt: str, n_ctx: int = 1024):
        import llama_cpp as L

        from minicpmv_edge.edge_runtime.engine import init_backend, repacking_ok

        init_backend()
        self.L = L
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = repacking_ok(text_path)
        self.model = L.llama_model_load_from_file(text_path.encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = n_ctx, 512, 512, 2, 2
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        data = prompt.encode()
        buf = (L.llama_token * (len(data) + 16))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        self.prompt_tokens = list(buf[:n])
        self.pos = 0
        self._decode(self.prompt_tokens)

    def _decode(self, toks):
        L = self.L
        batch = L.llama_batch_init(len(toks), 0, 1)
        batch.n_tokens = len(toks)
        for j, t in enumerate(toks):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = t, self.pos + j, 1, j == len(toks) - 1
            batch.seq_id[j][0] = 0
        assert L.llama_decode(self.ctx, batch) == 0
        L.llama_batch_free(batch)
        self.pos += len(toks)

    def logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).copy()

    def is_eog(self, tok: int) -> bool:
        return bool(self.L.llama_vocab_is_eog(self.vocab, tok))

    def generate(self, n: int, choose) -> list[int]:
        """`choose(self) -> token`; stops at an end-of-generation token (not included)."""
        out = []
        for _ in range(n):
            tok = choose(self)
            if self.is_eog(tok):
                break
            out.append(tok)
            self._decode([tok])
        return out

    def chain(self, *, temp, top_k, top_p, min_p, typical_p, repeat_penalty, repeat_last_n, presence, frequency,
              seed, bias=()):
        """llama.cpp's common_sampler chain, default sequence (common/common.h): logit bias, penalties,
        top-k, typical, top-p, min-p, temperature, dist; written here independently of our runtime."""
        L = self.L
        c = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if bias:
            arr = (L.llama_logit_bias * len(bias))(*[L.llama_logit_bias(t, b) for t, b in bias])
            L.llama_sampler_chain_add(c, L.llama_sampler_init_logit_bias(self.n_vocab, len(bias), arr))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_penalties(self.n_vocab, repeat_last_n, repeat_penalty,
                                                                    frequency, presence))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_top_k(top_k))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_typical(typical_p, 1))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_min_p(min_p, 1))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_temp(temp))
        L.llama_sampler_chain_add(c, L.llama_sampler_init_dist(seed))
        return c

    def sample_with(self, chain):
        return lambda me: int(self.L.llama_sampler_sample(chain, self.ctx, -1))

    def common_sampler(self, chain, grammar):
        """A chooser doing what llama.cpp's common_sampler_sample does with a grammar (common/sampling.cpp):
        the chain alone on every token; if the grammar rejects its choice, grammar then chain on every
        token; then the grammar and the chain accept the token. No shortcuts: the reference for ours."""
        L = self.L
        dt = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

        def candidates():
            cur = np.zeros(self.n_vocab, dtype=dt)
            cur["id"], cur["logit"] = np.arange(self.n_vocab), self.logits()
            return cur, L.llama_token_data_array(cur.ctypes.data_as(L.llama_token_data_p), len(cur), -1, False)

        def choose(me):
            cur, arr = candidates()
            L.llama_sampler_apply(chain, ctypes.byref(arr))
            tok = int(arr.data[arr.selected].id)
            one = L.llama_token_data(tok, 1.0, 0.0)
            single = L.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
            L.llama_sampler_apply(grammar, ctypes.byref(single))
            if single.data[0].logit == -np.inf:
                cur, arr = candidates()
                L.llama_sampler_apply(grammar, ctypes.byref(arr))
                L.llama_sampler_apply(chain, ctypes.byref(arr))
                tok = int(arr.data[arr.selected].id)
            if not self.is_eog(tok):
                L.llama_sampler_accept(grammar, tok)
            L.llama_sampler_accept(chain, tok)
            return tok

        return choose

    def close(self):
        L = self.L
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def gbnf_alternatives_to_regex(expr: str) -> str:
    """The GBNF subset _int_range emits ("x" literals, [a-b] classes, groups, |) as a Python regex."""
    out, i = [], 0
    while i < len(expr):
        c = expr[i]
        if c == '"':
            j = expr.index('"', i + 1)
            out.append(expr[i + 1:j].replace("-", r"\-"))
            i = j + 1
        elif c == "[":
            j = expr.index("]", i)
            out.append(expr[i:j + 1])
            i = j + 1
        elif c in "()|":
            out.append("(?:" if c == "(" else c)
            i += 1
        elif c == " ":
            i += 1
        else:
            raise ValueError(f"unexpected {c!r} in {expr!r}")
    return "".join(out)

