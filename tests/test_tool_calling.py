"""Tool calling end to end with the official `openai` client, on the 4.5 layout (JSON calls) and the 4.6
layout (XML calls): call -> tool result -> answer, streaming and not, with the prompt of every step
byte-identical to the real chat template rendered by transformers (tests/template_reference.py)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests import template_reference as ref
from tests.test_server import MODEL, Server

WEATHER = {"type": "object", "required": ["city"], "additionalProperties": False, "properties": {
    "city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 5}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The local time",
                                           "parameters": {"type": "object", "properties": {
                                               "tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}}}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
START = [{"role": "system", "content": "You answer with tools when they help."},
         {"role": "user", "content": "What is the weather in Paris and in Rome?"}]


@pytest.fixture(scope="module", params=["minicpmv-4.5", "minicpmv-4.6"])
def served(request, store, tmp_path_factory):
    res = store.converted(request.param)
    s = Server(res.text_path.parent, tmp_path_factory.mktemp("log-tools") / "server.log", "-t", "2")
    if request.param == "minicpmv-4.5":
        tok = ref.tokenizer_45()
        render = lambda msgs: ref.reference_45(tok, None, msgs, tools=TOOLS, enable_thinking=False)  # noqa: E731
    else:
        proc = ref.processor_46(tmp_path_factory.mktemp("proc46"))
        render = lambda msgs: ref.reference_46(proc, msgs, tools=TOOLS, enable_thinking=False)  # noqa: E731
    from minicpmv_edge.edge_runtime.engine import Model

    vocab = Model(str(res.text_path), vocab_only=True)
    yield request.param, s, render, vocab
    vocab.close()
    s.stop()


def _apply(srv, messages, **kw) -> str:
    r = httpx.post(srv.url + "/apply-template", json={"model": MODEL, "messages": messages, "tools": TOOLS, **kw},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def _client(srv):
    import openai

    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=900)


def _complete(client, stream: bool, **kw):
    """(message dict, finish_reason, usage) from a plain or a streamed completion."""
    if not stream:
        r = client.chat.completions.create(model=MODEL, **kw)
        msg = r.choices[0].message
        calls = [c.model_dump() for c in msg.tool_calls or []]
        return {"content": msg.content, "tool_calls": calls}, r.choices[0].finish_reason, r.usage
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                                 **kw))
    content, calls, finish = "", {}, None
    for ch in chunks:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            slot["id"] += tc.id or ""
            slot["function"]["name"] += tc.function.name or ""
            slot["function"]["arguments"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    return {"content": content or None, "tool_calls": [calls[i] for i in sorted(calls)]}, finish, chunks[-1].usage


def _check_calls(calls, names=None):
    assert calls
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("call_")
        name = c["function"]["name"]
        assert name in (names or SCHEMAS)
        jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[name])


def _history(msgs, message, results):
    """The conversation as the client sends it back (arguments as JSON text) and as transformers renders
    it (arguments as objects, as vLLM and llama-server hand them to the template)."""
    wire = msgs + [{"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]}] + \
        [{"role": "tool", "tool_call_id": c["id"], "content": r} for c, r in zip(message["tool_calls"], results)]
    hf = msgs + [{"role": "assistant", "content": message["content"] or "", "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["function"]["name"],
                                                         "arguments": json.loads(c["function"]["arguments"])}}
        for c in message["tool_calls"]]}] + \
        [{"role": "tool", "tool_call_id": c["id"], "content": r} for c, r in zip(message["tool_calls"], results)]
    return wire, hf


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip(served, stream):
    family, srv, render, vocab = served
    c = _client(srv)
    # step 1: the model calls (required: random weights would seldom call on their own)
    want = render(START)
    assert _apply(srv, START) == want
    # parallel calls allowed: random weights may chain calls until max_tokens ("length"); the complete
    # ones come back either way
    msg, finish, usage = _complete(c, stream, messages=START, tools=TOOLS, tool_choice="required", temperature=1.0,
                                   seed=3, max_tokens=120)
    assert finish in ("tool_calls", "length"), msg
    _check_calls(msg["tool_calls"])
    msg["content"] = None  # a call cut off by max_tokens is not sent back
    assert usage.prompt_tokens == len(vocab.tokenize(want))
    # step 2: the results go back; the answer uses them
    results = [json.dumps({"temp_c": 21, "sky": "clear"}) if t["function"]["name"] == "get_weather" else "09:30"
               for t in msg["tool_calls"]]
    wire, hf = _history(START, msg, results)
    want2 = render(hf)
    assert _apply(srv, wire) == want2
    assert "<tool_response>" in want2 and results[0] in want2
    msg2, finish2, usage2 = _complete(c, stream, messages=wire, tools=TOOLS, tool_choice="none", temperature=0,
                                      max_tokens=12)
    assert finish2 in ("stop", "length") and not msg2["tool_calls"] and isinstance(msg2["content"], str)
    assert usage2.prompt_tokens == len(vocab.tokenize(want2))
    # step 3: a follow-up question, a named function
    wire3 = wire + [{"role": "assistant", "content": msg2["content"]}, {"role": "user", "content": "And the time?"}]
    hf3 = hf + [{"role": "assistant", "content": msg2["content"]}, {"role": "user", "content": "And the time?"}]
    assert _apply(srv, wire3) == render(hf3)
    msg3, finish3, _ = _complete(c, stream, messages=wire3, tools=TOOLS, temperature=1.0, seed=5, max_tokens=100,
                                 tool_choice={"type": "function", "function": {"name": "get_time"}},
                                 parallel_tool_calls=False)
    assert finish3 == "tool_calls" and len(msg3["tool_calls"]) == 1
    _check_calls(msg3["tool_calls"], names={"get_time"})


def test_auto_none_and_parallel(served):
    family, srv, render, vocab = served
    c = _client(srv)
    open_tag = vocab.tokenize("<tool_call>")
    assert len(open_tag) == 1  # the real tokenizers have it as one token
    push = {str(open_tag[0]): 100}  # random weights: make the model start a call, then the grammar takes over
    for seed in range(3):
        msg, finish, _ = _complete(c, False, messages=START, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=300,
                                   logit_bias=push, parallel_tool_calls=False)
        assert finish == "tool_calls"
        _check_calls(msg["tool_calls"])
    for seed in range(2):  # (parallel calls: test_round_trip allows them; random weights rarely chain one)
        msg, finish, _ = _complete(c, False, messages=START, tools=TOOLS, tool_choice="required", temperature=1.0,
                                   seed=seed, max_tokens=200)
        _check_calls(msg["tool_calls"])
    msg, finish, _ = _complete(c, False, messages=START, tools=TOOLS, tool_choice="none", temperature=1.0, seed=0,
                               max_tokens=20, logit_bias=push)
    assert not msg["tool_calls"] and "<tool_call>" not in (msg["content"] or "")
    for seed in range(4):
        msg, finish, _ = _complete(c, False, messages=START, tools=TOOLS, tool_choice="required", temperature=1.0,
                                   seed=seed, max_tokens=300, parallel_tool_calls=False)
        assert finish == "tool_calls" and len(msg["tool_calls"]) == 1


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "number", "multipleOf": 2}}}}}], "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
])
def test_bad_tool_requests(served, body, param):
    family, srv, render, vocab = served
    r = srv.post({"model": MODEL, "messages": START, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert param in (r.json()["error"]["param"] or ""), r.text


def test_python_api_tool_calls(store):
    from minicpmv_edge.edge_runtime import MiniCPMV

    res = store.converted("minicpmv-4.6")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=2)
    try:
        r = m.chat(START, tools=TOOLS, tool_choice="required", temperature=1.0, seed=2, max_tokens=300,
                   parallel_tool_calls=False)
        assert r.finish_reason == "tool_calls" and len(r.tool_calls) == 1 and r.text == ""
        _check_calls([c.as_openai() for c in r.tool_calls])
        pieces = list(m.chat(START, tools=TOOLS, tool_choice="required", temperature=1.0, seed=2, max_tokens=300,
                             parallel_tool_calls=False, stream=True))
        streamed = [p.tool_call for p in pieces if p.tool_call is not None]
        assert [(x.name, x.arguments) for x in streamed] == [(x.name, x.arguments) for x in r.tool_calls]
        thought = m.chat(START, tools=TOOLS, tool_choice="required", enable_thinking=True, thinking_budget=6,
                         temperature=1.0, seed=2, max_tokens=300, parallel_tool_calls=False)
        assert thought.reasoning and thought.finish_reason == "tool_calls"  # the grammar waits for </think>
        _check_calls([c.as_openai() for c in thought.tool_calls])
    finally:
        m.close()
