"""Sampling settings -> a llama.cpp sampler chain (penalties, top-k, top-p, temperature, seed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from minicpmv_edge.errors import InputError


@dataclass(frozen=True)
class SamplingOptions:
    # defaults from the MiniCPM-V model cards' chat(): top_p 0.8, top_k 100, temperature 0.7, repetition 1.05
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 100
    repeat_penalty: float = 1.05
    repeat_last_n: int = 64
    seed: int = 0
    max_tokens: int = 512
    stop: tuple[str, ...] = field(default_factory=tuple)

    def validated(self) -> "SamplingOptions":
        if self.temperature < 0:
            raise InputError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.max_tokens < 1:
            raise InputError("top_k must be >= 0 and max_tokens >= 1")
        if self.repeat_penalty <= 0:
            raise InputError("repeat_penalty must be > 0")
        return self


class Sampler:
    def __init__(self, model, opts: SamplingOptions):
        import llama_cpp as L

        self._L = L
        self.ptr = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        add = lambda s: L.llama_sampler_chain_add(self.ptr, s)  # noqa: E731
        if opts.repeat_penalty != 1.0:
            add(L.llama_sampler_init_penalties(model.n_vocab, opts.repeat_last_n, opts.repeat_penalty, 0.0, 0.0))
        if opts.temperature <= 0:
            add(L.llama_sampler_init_greedy())
        else:
            if opts.top_k > 0:
                add(L.llama_sampler_init_top_k(opts.top_k))
            add(L.llama_sampler_init_top_p(opts.top_p, 1))
            add(L.llama_sampler_init_temp(opts.temperature))
            add(L.llama_sampler_init_dist(opts.seed & 0xFFFFFFFF))

    def sample(self, ctx) -> int:
        tok = self._L.llama_sampler_sample(self.ptr, ctx.ptr, -1)
        return int(tok)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._L.llama_sampler_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()
