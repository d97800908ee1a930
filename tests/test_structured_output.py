"""Structured output: 50 sampled answers (temperature 1) per JSON schema parse and validate with
`jsonschema`; the grammar shortcut picks exactly llama.cpp's token; thinking keeps the grammar for the
answer; the thinking budget; response_format; and clear refusals of what cannot be enforced."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.grammar import from_json_schema
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.edge_runtime.schema_grammar import _int_range, json_schema_to_gbnf
from minicpmv_edge.errors import InputError
from tests.sampling_helpers import ByHand, gbnf_alternatives_to_regex

MSGS = [{"role": "user", "content": "Read the receipt and answer in JSON."}]
N_SAMPLES = 50

POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                          "y": {"type": "integer", "minimum": -9, "maximum": 0}},
         "required": ["x", "y"], "additionalProperties": False}
SCHEMAS = {
    "object-required-optional": {
        "type": "object", "additionalProperties": False, "required": ["name", "age"],
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 150},
                       "member": {"type": "boolean"}, "note": {"type": "string", "minLength": 2, "maxLength": 6}}},
    "array-of-ranged-integers": {"type": "array", "minItems": 1, "maxItems": 4,
                                 "items": {"type": "integer", "minimum": -50, "maximum": 1200}},
    "enums-consts-nullable": {
        "type": "object", "required": ["color", "kind", "count"], "additionalProperties": False,
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "kind": {"const": "receipt"},
                       "count": {"type": ["integer", "null"]}, "flag": {"enum": [1, "two", None, True]}}},
    "nested-receipt": {
        "type": "object", "required": ["store", "items", "total"], "additionalProperties": False,
        "properties": {
            "store": {"type": "string", "maxLength": 10},
            "items": {"type": "array", "maxItems": 3, "items": {
                "type": "object", "required": ["name", "qty", "price"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "maxLength": 8},
                               "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                               "price": {"type": "number", "minimum": 0}}}},
            "total": {"type": "number"}}},
    "string-patterns": {
        "type": "object", "required": ["code", "zip", "word"], "additionalProperties": False,
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{3}$"},
                       "zip": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
                       "word": {"type": "string", "pattern": "^[^,;]{1,5}$"}}},
    "refs-and-anyof": {
        "$defs": {"point": POINT}, "type": "object", "required": ["a", "b"], "additionalProperties": False,
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]},
                       "label": {"type": "string", "maxLength": 3, "description": "annotations are fine"}}},
}


@pytest.fixture(scope="module")
def m45(store):
    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=1024, n_threads=2)
    yield res, m
    m.close()


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sampled_answers_validate(m45, name):
    res, m = m45
    schema = SCHEMAS[name]
    validator = jsonschema.Draft202012Validator(schema)
    seen = set()
    for i in range(N_SAMPLES):
        r = m.chat(MSGS, temperature=1.0, top_p=1.0, max_tokens=400, seed=i, json_schema=schema)
        assert r.finish_reason == "stop", (name, i, r.text)
        doc = json.loads(r.text)
        validator.validate(doc)
        seen.add(r.text)
    assert len(seen) > N_SAMPLES // 2  # sampled, not one answer repeated


def test_grammar_shortcut_gives_llama_cpp_tokens(m45):
    """Our grammar resampling looks at the best candidates first; it must choose exactly the token
    llama.cpp's common_sampler_sample chooses over the whole vocabulary (greedy and top-k sampling)."""
    res, m = m45
    schema = SCHEMAS["nested-receipt"]
    gbnf = from_json_schema(schema).gbnf
    prompt = m.build_prompt(normalize(MSGS, m.limits), False)[0]
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_k=20, top_p=0.9, seed=7),
               dict(temperature=1.3, top_k=50, top_p=1.0, seed=11)):
        ours = m.chat(MSGS, max_tokens=60, logprobs=True, json_schema=schema, repeat_penalty=1.1, **kw)
        ref = ByHand(str(res.text_path), prompt)
        L = ref.L
        if kw["temperature"] == 0:
            chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(ref.n_vocab, 64, 1.1, 0.0, 0.0))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            chain = ref.chain(temp=kw["temperature"], top_k=kw["top_k"], top_p=kw["top_p"], min_p=0.0, typical_p=1.0,
                              repeat_penalty=1.1, repeat_last_n=64, presence=0.0, frequency=0.0, seed=kw["seed"])
        grammar = L.llama_sampler_init_grammar(ref.vocab, gbnf.encode(), b"root")
        want = ref.generate(60, ref.common_sampler(chain, grammar))
        L.llama_sampler_free(grammar)
        L.llama_sampler_free(chain)
        ref.close()
        assert [e.token_id for e in ours.logprobs] == want[:len(ours.logprobs)], kw
        assert len(ours.logprobs) == min(len(want), 60)


def test_thinking_keeps_the_grammar_for_the_answer(m45):
    res, m = m45
    schema = SCHEMAS["object-required-optional"]
    for seed in range(3):
        r = m.chat(MSGS, enable_thinking=True, temperature=1.0, seed=seed, max_tokens=300, json_schema=schema,
                   thinking_budget=8, logprobs=True, top_logprobs=1)
        assert r.reasoning and "</think>" in r.raw and r.finish_reason == "stop"
        jsonschema.validate(json.loads(r.text), schema)
        forced = [not e.top for e in r.logprobs]  # forced tokens had no choice: no alternatives recorded
        thought = b"".join(bytes(e.bytes) for e in r.logprobs[:8]).decode("utf-8", "ignore")
        closing = m.model.tokenize(("" if thought.endswith("\n") else "\n") + "</think>\n\n")
        assert forced[:8] == [False] * 8 and forced[8:8 + len(closing)] == [True] * len(closing)
        assert [e.token_id for e in r.logprobs[8:8 + len(closing)]] == closing
    none = m.chat(MSGS, enable_thinking=True, temperature=0, max_tokens=200, json_schema=schema, thinking_budget=0)
    assert none.reasoning == "" and none.raw.startswith("\n</think>\n\n")
    jsonschema.validate(json.loads(none.text), schema)
    raw = m.chat(MSGS, enable_thinking=True, temperature=0, max_tokens=40, thinking_budget=3, reasoning_format="none",
                 stream=True)
    pieces = list(raw)
    assert not any(p.reasoning for p in pieces) and "</think>" in "".join(p.text for p in pieces)
    assert m.last_result.reasoning == "" and m.last_result.text == "".join(p.text for p in pieces)
    msg = "Enough thinking."
    budget = m.chat(MSGS, enable_thinking=True, temperature=0, max_tokens=40, thinking_budget=2,
                    thinking_budget_message=msg)
    assert budget.reasoning.endswith(msg)


def test_response_format_and_grammar_forms(m45):
    res, m = m45
    # a free-form object: random weights would write one endless string, so closing quotes and braces are
    # favoured (logit_bias); the grammar still decides what may come where
    closers = {t: 5.0 for b in (b'"', b"}") for t in m.model.tokenize(b.decode(), parse_special=False)}
    objs = [m.chat(MSGS, temperature=1.0, seed=seed, max_tokens=300, response_format={"type": "json_object"},
                   logit_bias=closers) for seed in range(3, 7)]
    assert all(o.finish_reason == "stop" and isinstance(json.loads(o.text), dict) for o in objs), [o.text for o in objs]
    assert any(json.loads(o.text) for o in objs)  # not only "{}"
    rf = {"type": "json_schema", "json_schema": {"name": "pt", "strict": True, "schema": POINT}}
    pt = m.chat(MSGS, temperature=1.0, seed=4, max_tokens=100, response_format=rf)
    jsonschema.validate(json.loads(pt.text), POINT)
    text = m.chat(MSGS, temperature=0, max_tokens=8, response_format={"type": "text"})
    assert text.text == m.chat(MSGS, temperature=0, max_tokens=8).text
    yes_no = m.chat(MSGS, temperature=1.0, seed=5, max_tokens=10, grammar='root ::= ("yes" | "no") "."')
    assert yes_no.text in ("yes.", "no.")


@pytest.mark.parametrize("kw, msg", [
    (dict(json_schema={"type": "number", "multipleOf": 3}), "multipleOf"),
    (dict(json_schema={"type": "array", "items": {"type": "string"}, "uniqueItems": True}), "uniqueItems"),
    (dict(json_schema={"type": "string", "format": "email"}), "format 'email'"),
    (dict(json_schema={"type": "string", "pattern": "[a-z]+"}), "anchored"),
    (dict(json_schema={"type": "string", "pattern": "^\\s+$"}), "not supported"),
    (dict(json_schema={"type": "number", "minimum": 1.5}), "number bounds"),
    (dict(json_schema={"type": "integer", "minimum": 5, "maximum": 2}), "no integer"),
    (dict(json_schema={"$ref": "https://example.com/s.json"}), "local references"),
    (dict(json_schema="{not json"), "not valid JSON"),
    (dict(json_schema=[1, 2]), "must be a JSON object"),
    (dict(grammar="root ::= undefined-rule"), "Undefined rule"),
    (dict(grammar="start ::= \"a\""), "root"),
    (dict(grammar='root ::= "a"', json_schema={}), "only one"),
    (dict(response_format={"type": "xml"}), "xml"),
    (dict(response_format={"type": "json_schema"}), "json_schema"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "extra": 1}}),
     "extra"),
])
def test_refusals(m45, kw, msg):
    res, m = m45
    with pytest.raises(InputError, match=re.escape(msg)):
        m.chat(MSGS, max_tokens=4, **kw)


def test_integer_ranges_are_exact():
    rng = random.Random(0)
    cases = [(0, 0), (0, 9), (5, 123), (-20, 7), (-999, -10), (10, 10), (1, 100000), (-5, None), (None, 12),
             (37, 4021)] + [tuple(sorted((rng.randint(-3000, 3000), rng.randint(-3000, 3000)))) for _ in range(30)]
    for lo, hi in cases:
        pattern = re.compile(gbnf_alternatives_to_regex(_int_range(lo, hi)))
        a = (lo if lo is not None else -5000) - 300
        b = (hi if hi is not None else 5000) + 300
        for v in range(a, b):
            want = (lo is None or v >= lo) and (hi is None or v <= hi)
            assert bool(pattern.fullmatch(str(v))) == want, (lo, hi, v)
        assert not pattern.fullmatch("-0") and not pattern.fullmatch("007")


def test_grammar_text_is_llama_cpp_parsable_for_every_schema(m45):
    res, m = m45
    for name, schema in SCHEMAS.items():
        g = from_json_schema(schema)
        assert g.check(m.model) is g, name
        assert "char ::=" not in g.gbnf or "\\x00-\\x1F" in g.gbnf  # no raw control characters in strings
    assert "root ::=" in json_schema_to_gbnf({})
