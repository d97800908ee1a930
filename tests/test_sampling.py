"""Sampling parity with llama.cpp's sampler chain, seeds, logit bias, ignore_eos, -1 tokens, logprobs,
the model's own sampling defaults, and the CLI flags that reach them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.logprobs import log_softmax
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.edge_runtime.sampling import SamplingOptions, model_defaults
from minicpmv_edge.errors import InputError
from tests.sampling_helpers import ByHand

MSGS = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


@pytest.fixture(scope="module")
def m45(store):
    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=1024, n_threads=2)
    yield res, m
    m.close()


def _prompt(m, msgs=MSGS, thinking=False):
    return m.build_prompt(normalize(msgs, m.limits), thinking)[0]


def _ids(r):
    return [e.token_id for e in r.logprobs]


def test_every_sampler_setting_reaches_llama_cpp_in_its_order(m45):
    """The same tokens as llama.cpp's own chain built by hand with the same settings and seed."""
    res, m = m45
    kw = dict(temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95, repeat_penalty=1.1,
              repeat_last_n=32, presence_penalty=0.4, frequency_penalty=0.3, seed=1234)
    bias_tok = m.model.tokenize(" the", parse_special=False)[0]
    ours = m.chat(MSGS, max_tokens=24, logprobs=True, logit_bias={bias_tok: 3.0}, **kw)
    ref = ByHand(str(res.text_path), _prompt(m))
    chain = ref.chain(temp=0.9, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95, repeat_penalty=1.1,
                      repeat_last_n=32, presence=0.4, frequency=0.3, seed=1234, bias=[(bias_tok, 3.0)])
    want = ref.generate(24, ref.sample_with(chain))
    ref.L.llama_sampler_free(chain)
    ref.close()
    assert _ids(ours) == want[:len(ours.logprobs)] and len(ours.logprobs) >= min(len(want), 5)
    assert ours.seed == 1234
    # a different value of any one setting changes the tokens (each setting is live)
    for name, value in (("presence_penalty", 1.5), ("min_p", 0.9), ("typical_p", 0.5), ("top_k", 3)):  # min_p: near-flat logits of random weights over the real vocabulary keep most tokens above 0.2 x max
        other = m.chat(MSGS, max_tokens=24, logprobs=True, logit_bias={bias_tok: 3.0}, **{**kw, name: value})
        assert _ids(other) != _ids(ours), name


def test_seed_random_unless_given(m45):
    res, m = m45
    a = m.chat(MSGS, temperature=1.0, max_tokens=16)
    b = m.chat(MSGS, temperature=1.0, max_tokens=16)
    assert a.seed != b.seed and a.raw != b.raw  # -1/None: a fresh random seed each time
    again = m.chat(MSGS, temperature=1.0, max_tokens=16, seed=a.seed)  # the reported seed replays it
    assert again.raw == a.raw
    assert m.chat(MSGS, temperature=1.0, max_tokens=16, seed=-1).seed not in (a.seed, b.seed)
    assert m.chat(MSGS, temperature=0, max_tokens=4).seed is None  # greedy draws nothing


def test_logit_bias_forces_and_bans(m45):
    res, m = m45
    greedy = m.chat(MSGS, temperature=0, max_tokens=12, logprobs=True)
    first = _ids(greedy)[0]
    banned = m.chat(MSGS, temperature=0, max_tokens=12, logprobs=True, logit_bias={first: False})
    assert first not in _ids(banned)
    forced_tok = m.model.tokenize(" lighthouse", parse_special=False)[0]
    forced = m.chat(MSGS, temperature=1.0, max_tokens=6, logprobs=True, logit_bias={str(forced_tok): 100})
    assert _ids(forced) == [forced_tok] * 6
    text = m.chat(MSGS, temperature=1.0, max_tokens=6, logprobs=True, logit_bias={" lighthouse": 100})
    assert set(_ids(text)) <= set(m.model.tokenize(" lighthouse", parse_special=False))
    with pytest.raises(InputError, match="outside the vocabulary"):
        m.chat(MSGS, logit_bias={m.model.n_vocab + 5: 1.0})
    with pytest.raises(InputError, match="logit_bias"):
        m.chat(MSGS, logit_bias={1: "high"})


def test_ignore_eos_and_unlimited_tokens(m45):
    res, m = m45
    eog = next(t for t in range(m.model.n_vocab) if m.model.is_eog(t))
    ends = m.chat(MSGS, temperature=0, max_tokens=10, logit_bias={eog: 100})
    assert ends.finish_reason == "stop" and ends.usage["completion_tokens"] == 1 and ends.text == ""
    runs = m.chat(MSGS, temperature=0, max_tokens=10, logit_bias={eog: 100}, ignore_eos=True)
    assert runs.finish_reason == "length" and runs.usage["completion_tokens"] == 10
    small = MiniCPMV(res.text_path, None, n_ctx=128, n_threads=2)
    try:
        r = small.chat(MSGS, temperature=0, max_tokens=-1, ignore_eos=True)
        n_ctx = small._ctx.n_ctx
        assert r.finish_reason == "length"
        assert r.usage["completion_tokens"] == n_ctx - r.usage["prompt_tokens"] + 1  # the last one is not evaluated
    finally:
        small.close()
    for bad in (0, -2):
        with pytest.raises(InputError, match="max_tokens"):
            m.chat(MSGS, max_tokens=bad)


def test_logprobs_are_log_softmax_of_llama_cpp_logits(m45):
    res, m = m45
    r = m.chat(MSGS, temperature=0, max_tokens=10, logprobs=True, top_logprobs=5, repeat_penalty=1.0)
    ref = ByHand(str(res.text_path), _prompt(m))
    steps = []

    def greedy(me):
        logits = me.logits()
        steps.append(log_softmax(logits))
        return int(np.argmax(logits))

    toks = ref.generate(10, greedy)
    ref.close()
    assert _ids(r) == toks[:len(r.logprobs)] and r.logprobs
    for entry, lp in zip(r.logprobs, steps):
        assert abs(entry.logprob - lp[entry.token_id]) < 1e-6
        best = np.argsort(-lp)[:5]
        assert [t.token_id for t in entry.top] == list(best)
        assert np.allclose([t.logprob for t in entry.top], lp[best], atol=1e-6)
        assert entry.bytes == list(m.model.piece(entry.token_id))
        assert math.isclose(sum(math.exp(x) for x in lp), 1.0, rel_tol=1e-9)
    streamed = [e for p in m.chat(MSGS, stream=True, temperature=0, max_tokens=10, logprobs=True,
                                   repeat_penalty=1.0) for e in (p.logprobs or [])]
    assert [e.token_id for e in streamed] == _ids(r)
    with pytest.raises(InputError, match="top_logprobs"):
        m.chat(MSGS, logprobs=True, top_logprobs=21)
    with pytest.raises(InputError, match="needs logprobs"):
        m.chat(MSGS, top_logprobs=2)


def test_bad_values_are_refused(m45):
    res, m = m45
    for kw, word in ((dict(temperature=float("nan")), "temperature"), (dict(min_p=1.5), "min_p"),
                     (dict(typical_p=0), "typical_p"), (dict(repeat_last_n=-2), "repeat_last_n"),
                     (dict(presence_penalty=float("inf")), "presence_penalty"), (dict(seed=2**32), "seed"),
                     (dict(top_k=-1), "top_k"), (dict(reasoning_format="deepseek-legacy"), "reasoning_format"),
                     (dict(thinking_budget=-2), "thinking_budget"), (dict(stop=[1]), "stop"),
                     (dict(chat_template_kwargs={"preserve_thinking": True}), "does not use 'preserve_thinking'"),
                     (dict(chat_template_kwargs={"messages": []}), "set by the request"),
                     (dict(parallel_tool_calls=False), "parallel_tool_calls needs tools"),
                     (dict(tool_choice="required"), "tool_choice needs tools")):
        with pytest.raises(InputError, match=word):
            m.chat(MSGS, **kw)
    with pytest.raises(TypeError):
        m.chat(MSGS, mirostat=2)  # an argument we do not implement is not silently accepted


def test_model_defaults_from_general_sampling_keys():
    keys = {"general.sampling.temp": "0.6", "general.sampling.top_k": "20", "general.sampling.top_p": "0.95",
            "general.sampling.penalty_repeat": "1.0", "general.sampling.penalty_last_n": "128"}
    d = model_defaults(keys.get)
    assert (d.temperature, d.top_k, d.top_p, d.repeat_penalty, d.repeat_last_n) == (0.6, 20, 0.95, 1.0, 128)
    assert d.min_p == SamplingOptions().min_p  # a key the model lacks keeps the model card's value
    assert model_defaults({}.get) == SamplingOptions()
    assert model_defaults({"general.sampling.top_p": "lots"}.get).top_p == SamplingOptions().top_p


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_converted_model_samples_with_its_generation_config(store, family):
    """generation_config.json -> general.sampling.* (convert, as llama.cpp's converter) -> the defaults chat()
    samples with when the caller sets nothing; fields it lacks keep the model card's values."""
    gen = json.loads((store.checkpoint(family) / "generation_config.json").read_text())
    card = SamplingOptions()
    want = dict(temperature=gen.get("temperature", card.temperature), top_k=gen.get("top_k", card.top_k),
                top_p=gen.get("top_p", card.top_p), min_p=gen.get("min_p", card.min_p),
                repeat_penalty=gen.get("repetition_penalty", card.repeat_penalty))
    res = store.converted(family)
    m = MiniCPMV(res.text_path, None, n_ctx=512, n_threads=2)
    try:
        assert {k: getattr(m.sampling_defaults, k) for k in want} == pytest.approx(want, rel=1e-6)
        plain = m.chat(MSGS, max_tokens=16, seed=7, logprobs=True)
        assert _ids(plain) == _ids(m.chat(MSGS, max_tokens=16, seed=7, logprobs=True, **want))
        card_values = {k: getattr(card, k) for k in want}
        if card_values != want:  # the model's values, not the card's, reached the sampler
            assert _ids(plain) != _ids(m.chat(MSGS, max_tokens=16, seed=7, logprobs=True, **card_values))
    finally:
        m.close()


def test_cli_flags(m45):
    res, m = m45
    folder = str(res.text_path.parent)
    base = [sys.executable, "-m", "minicpmv_edge", "run", folder, "-p", "Tell me a story.", "-t", "2", "--json"]

    def run(*flags):
        p = subprocess.run(base + list(flags), capture_output=True, text=True, timeout=300)
        return p.returncode, (json.loads(p.stdout) if p.returncode == 0 else p.stderr)

    rc, a = run("-n", "8", "--temp", "1", "--min-p", "0.05", "--presence-penalty", "0.5", "--frequency-penalty",
                "0.2", "--typical", "0.9", "--repeat-last-n", "16", "--n-probs", "2")
    assert rc == 0 and isinstance(a["seed"], int) and len(a["logprobs"]) == a["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) == 2 for e in a["logprobs"])
    rc, b = run("-n", "8", "--temp", "1", "--min-p", "0.05", "--presence-penalty", "0.5", "--frequency-penalty",
                "0.2", "--typical", "0.9", "--repeat-last-n", "16", "--seed", str(a["seed"]))
    assert rc == 0 and b["text"] == a["text"]  # the printed seed replays the answer
    eog = next(t for t in range(m.model.n_vocab) if m.model.is_eog(t))
    rc, c = run("-n", "-1", "--temp", "0", "-l", f"{eog}+100", "--ignore-eos", "-c", "128")
    assert rc == 0 and c["finish_reason"] == "length" and c["usage"]["total_tokens"] >= 128
    for flags, word in ((["--min-p", "2"], "min-p"), (["-n", "-2"], "n-predict"), (["-l", "5x"], "logit-bias"),
                        (["--n-probs", "3", "--seed", "99999999999"], "seed"), (["--typical", "0"], "typical")):
        rc, err = run(*flags)
        assert rc == 2 and word in err and len(err.strip().splitlines()) == 1, (flags, err)
