"""Per-token work outside llama.cpp's decode: the greedy fast path (numpy argmax instead of llama.cpp's
candidate array) picks exactly the token llama.cpp's own chain picks, with and without logit biases."""

from __future__ import annotations

import pytest

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime import generate as generate_mod
from minicpmv_edge.edge_runtime.sampling import Sampler


class _ChainSampler(Sampler):
    """The same sampler with the fast path off: every token through llama_sampler_sample."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fast_greedy = False


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_greedy_fast_path_equals_llama_cpp_chain(store, monkeypatch, family):
    res = store.converted(family)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=1024, n_threads=2)
    msgs = [{"role": "user", "content": "Write a long story about a lighthouse."}]
    cases = [dict(), dict(ignore_eos=True), dict(logit_bias={"the": 3.5, 10: -2.0, 11: False})]
    fast = []
    for kw in cases:
        m.reset()
        r = m.chat(msgs, temperature=0, repeat_penalty=1.0, max_tokens=40, **kw)
        fast.append(r.raw)
    monkeypatch.setattr(generate_mod, "Sampler", _ChainSampler)
    for kw, want in zip(cases, fast):
        m.reset()
        assert m.chat(msgs, temperature=0, repeat_penalty=1.0, max_tokens=40, **kw).raw == want, kw
    m.close()


def test_fast_path_only_where_it_is_exact(store):
    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=256, n_threads=2)
    from dataclasses import replace

    base = replace(m.sampling_defaults, temperature=0.0, repeat_penalty=1.0, presence_penalty=0.0,
                   frequency_penalty=0.0)
    assert Sampler(m.model, base, 256).fast_greedy
    assert not Sampler(m.model, replace(base, repeat_penalty=1.1), 256).fast_greedy  # penalties keep state
    assert not Sampler(m.model, replace(base, temperature=0.7), 256).fast_greedy
    m.close()
