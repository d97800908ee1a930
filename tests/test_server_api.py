"""The server's request fields at llama-server parity, through the official `openai` client: structured
output, logprobs, n > 1, the sampling fields, reasoning controls; and a 400 naming every field we do not
implement (never a silently ignored one)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.test_server import MODEL, Server, err, user

RECEIPT = {"type": "object", "additionalProperties": False, "required": ["store", "total", "items"],
           "properties": {"store": {"type": "string", "maxLength": 10}, "total": {"type": "number", "minimum": 0},
                          "items": {"type": "array", "maxItems": 3, "items": {"enum": ["tea", "cake", "bread"]}}}}


@pytest.fixture(scope="module")
def srv(store, tmp_path_factory):
    folder = store.converted("minicpmv-4.5").text_path.parent
    s = Server(folder, tmp_path_factory.mktemp("log-api") / "server.log", "-t", "2")
    s.text_path = store.converted("minicpmv-4.5").text_path
    yield s
    s.stop()


def test_response_format_json_schema_and_object(srv):
    c = srv.client()
    rf = {"type": "json_schema", "json_schema": {"name": "receipt", "strict": True, "schema": RECEIPT}}
    for seed in range(5):
        r = c.chat.completions.create(model=MODEL, messages=[user("Extract the receipt.")], max_tokens=300,
                                      temperature=1.0, seed=seed, response_format=rf)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), RECEIPT)
    chunks = list(c.chat.completions.create(model=MODEL, messages=[user("Extract the receipt.")], max_tokens=300,
                                            temperature=1.0, seed=9, response_format=rf, stream=True))
    jsonschema.validate(json.loads("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)), RECEIPT)
    # a free-form object: random weights would write one endless string, so closing quotes and braces are
    # favoured (logit_bias); the grammar still decides what may come where
    closers = {str(_token_id(srv, b)): 6 for b in (b'"', b"}", b'"}', b'",') if _token_id(srv, b) is not None}
    for seed in range(3):
        obj = c.chat.completions.create(model=MODEL, messages=[user("JSON please")], max_tokens=300, temperature=1.0,
                                        seed=seed, response_format={"type": "json_object"}, logit_bias=closers)
        assert obj.choices[0].finish_reason == "stop" and isinstance(json.loads(obj.choices[0].message.content), dict)
    # llama-server's own fields do the same
    via_field = c.chat.completions.create(model=MODEL, messages=[user("Extract the receipt.")], max_tokens=300,
                                          temperature=1.0, seed=0, extra_body={"json_schema": RECEIPT})
    first = c.chat.completions.create(model=MODEL, messages=[user("Extract the receipt.")], max_tokens=300,
                                      temperature=1.0, seed=0, response_format=rf)
    assert via_field.choices[0].message.content == first.choices[0].message.content
    gbnf = c.chat.completions.create(model=MODEL, messages=[user("yes or no?")], max_tokens=5, temperature=1.0,
                                     extra_body={"grammar": 'root ::= "yes" | "no"'})
    assert gbnf.choices[0].message.content in ("yes", "no")


def test_logprobs_and_n(srv):
    c = srv.client()
    r = c.chat.completions.create(model=MODEL, messages=[user("Say something.")], max_tokens=8, temperature=1.0,
                                  seed=5, n=3, logprobs=True, top_logprobs=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert len({ch.message.content for ch in r.choices}) > 1  # seeds 5, 6, 7
    assert r.usage.completion_tokens == sum(len(ch.logprobs.content) for ch in r.choices)
    for ch in r.choices:
        for tok in ch.logprobs.content:
            assert tok.logprob <= 0 and len(tok.top_logprobs) == 3
            assert tok.top_logprobs[0].logprob >= tok.logprob - 1e-9 or tok.token in [t.token for t in tok.top_logprobs]
            assert bytes(tok.bytes).decode("utf-8", "replace") == tok.token
    again = c.chat.completions.create(model=MODEL, messages=[user("Say something.")], max_tokens=8, temperature=1.0,
                                      seed=6, logprobs=True)
    assert again.choices[0].message.content == r.choices[1].message.content  # choice i uses seed + i
    chunks = list(c.chat.completions.create(model=MODEL, messages=[user("Say something.")], max_tokens=8,
                                            temperature=1.0, seed=5, n=3, logprobs=True, stream=True,
                                            stream_options={"include_usage": True}))
    for i, ch in enumerate(r.choices):
        text = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices and x.choices[0].index == i)
        toks = [t.token for x in chunks if x.choices and x.choices[0].index == i and x.choices[0].logprobs
                for t in x.choices[0].logprobs.content]
        assert text == ch.message.content and toks == [t.token for t in ch.logprobs.content]
        assert [x.choices[0].finish_reason for x in chunks if x.choices and x.choices[0].index == i][-1] == \
            ch.finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_sampling_fields_change_the_answer(srv):
    c = srv.client()
    # random weights over the real vocabulary give near-flat logits that rarely repeat a token; a biased token
    # that recurs gives the penalties and the truncating samplers something to act on
    push = {str(_token_id(srv, b" the")): 6}
    base = dict(model=MODEL, messages=[user("Tell a story.")], max_tokens=16, temperature=1.0, seed=3,
                logit_bias=push)
    ref = c.chat.completions.create(**base).choices[0].message.content
    assert c.chat.completions.create(**base).choices[0].message.content == ref
    for extra in ({"presence_penalty": 1.5}, {"frequency_penalty": 1.5}, {"top_p": 0.5}):
        assert c.chat.completions.create(**base, **extra).choices[0].message.content != ref, extra
    for extra in ({"min_p": 0.3}, {"typical_p": 0.3}, {"top_k": 2}, {"repeat_last_n": 0, "repeat_penalty": 1.5}):
        assert c.chat.completions.create(**base, extra_body=extra).choices[0].message.content != ref, extra
    greedy = c.chat.completions.create(model=MODEL, messages=[user("Tell a story.")], max_tokens=4, temperature=0,
                                       logprobs=True)
    first = greedy.choices[0].logprobs.content[0]
    tok_id = _token_id(srv, first.bytes)
    banned = c.chat.completions.create(model=MODEL, messages=[user("Tell a story.")], max_tokens=4, temperature=0,
                                       logit_bias={str(tok_id): -100}, logprobs=True)
    assert banned.choices[0].logprobs.content[0].token != first.token
    stop = c.chat.completions.create(model=MODEL, messages=[user("Tell a story.")], max_tokens=12, temperature=0,
                                     stop=[greedy.choices[0].message.content[2:4]])
    assert stop.choices[0].finish_reason == "stop" and len(stop.choices[0].message.content) <= 2


def _token_id(srv, token_bytes):
    from minicpmv_edge.edge_runtime.engine import Model

    m = Model(str(srv.text_path), vocab_only=True)
    try:
        return next((t for t in range(m.n_vocab) if m.piece(t) == bytes(token_bytes)), None)
    finally:
        m.close()


def test_reasoning_controls(srv):
    c = srv.client()
    think = {"chat_template_kwargs": {"enable_thinking": True}}
    r = c.chat.completions.create(model=MODEL, messages=[user("Think.")], max_tokens=40, temperature=0,
                                  extra_body={**think, "thinking_budget_tokens": 4})
    msg = r.choices[0].message
    assert msg.reasoning_content and "</think>" not in msg.content
    full = c.chat.completions.create(model=MODEL, messages=[user("Think.")], max_tokens=40, temperature=0,
                                     extra_body=think).choices[0].message
    assert len(msg.reasoning_content) < len(full.reasoning_content) or full.content == ""
    zero = c.chat.completions.create(model=MODEL, messages=[user("Think.")], max_tokens=20, temperature=0,
                                     extra_body={**think, "reasoning_budget_tokens": 0}).choices[0].message
    assert zero.reasoning_content == ""
    raw = c.chat.completions.create(model=MODEL, messages=[user("Think.")], max_tokens=40, temperature=0,
                                    extra_body={**think, "reasoning_format": "none",
                                                "thinking_budget_tokens": 4}).choices[0].message
    assert "</think>" in raw.content and getattr(raw, "reasoning_content", None) in (None, "")


@pytest.mark.parametrize("body, param", [
    ({"mirostat": 2}, "mirostat"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"audio": {"voice": "alloy"}}, "audio"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.user.name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "low"}}]}]},
     "detail"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string",
                                                                                        "format": "email"}}}},
     "response_format"),
    ({"json_schema": {"type": "object", "patternProperties": {}}}, "json_schema"),
    ({"grammar": "root ::= missing"}, "grammar"),
    ({"grammar": 'root ::= "a"', "json_schema": {}}, "response_format"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"n": 99}, "n"),
    ({"seed": 2**40}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"reasoning_format": "deepseek-legacy"}, "reasoning_format"),
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs.enable_thinking"),
    ({"stream_options": {"include_usage": True, "continuous_usage_stats": True}}, "stream_options"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"chat_template_kwargs": {"preserve_thinking": True}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
])
def test_unimplemented_or_bad_fields_are_refused(srv, body, param):
    req = {"model": MODEL, "messages": [user("hi")], "max_tokens": 2, **body}
    e = err(srv.post(req), 400)
    assert param in (e["param"] or "") and param.split(".")[-1] in e["message"], e
