"""Tool-call formats against the real MiniCPM-V chat templates: what the template writes for a call
is what we parse back (whole and streamed), and the tool_choice grammar accepts exactly that shape."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from pathlib import Path

import jinja2
import pytest

from minicpmv_edge.edge_runtime.tools import (ToolStream, call_grammar, check_tools, detect_format, split_calls)



def _real() -> Path:
    """../shared/reference/real-checkpoints next to the checkout (a worktree: next to its main checkout)."""
    if os.environ.get("MINICPMV_EDGE_REAL_CHECKPOINTS"):
        return Path(os.environ["MINICPMV_EDGE_REAL_CHECKPOINTS"])
    repo = Path(__file__).resolve().parents[1]
    common = subprocess.run(["git", "-C", str(repo), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                            capture_output=True, text=True).stdout.strip()
    for base in (repo, Path(common).parent if common else repo):
        if (base.parent / "shared" / "reference" / "real-checkpoints").is_dir():
            return base.parent / "shared" / "reference" / "real-checkpoints"
    raise FileNotFoundError("../shared/reference/real-checkpoints is missing (set MINICPMV_EDGE_REAL_CHECKPOINTS)")


REAL = _real()

TOOLS = check_tools([
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "metric": {"type": "boolean"}, "hours": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
            "unit": {"enum": ["C", "F"]}}}}},
    {"type": "function", "function": {"name": "now", "description": "The time"}},
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {
        "query": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}}}}}},
])
CALLS = [("get_weather", {"city": "Paris, FR", "days": 3, "metric": True, "hours": [9, 12], "unit": "C"}),
         ("now", {}),
         ("lookup", {"query": {"q": "café"}}),
         ("get_weather", {"city": "Multi\nline <b>"})]


def _template(family: str) -> str:
    if family == "4.5":
        return json.loads((REAL / "minicpm-v-4_5" / "tokenizer_config.json").read_text())["chat_template"]
    return (REAL / "minicpm-v-4.6" / "chat_template.jinja").read_text()


def _render(source: str, messages, **kw) -> str:
    """The template rendered as transformers renders it (tojson = json.dumps without ASCII escapes)."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, **k: json.dumps(x, ensure_ascii=False, **k)
    return env.from_string(source).render(messages=messages, **kw)


def _assistant_text(source: str, calls, content: str = "") -> str:
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": content,
             "tool_calls": [{"type": "function", "id": f"c{i}", "function": {"name": n, "arguments": a}}
                            for i, (n, a) in enumerate(calls)]}]
    text = _render(source, msgs, tools=TOOLS, add_generation_prompt=False)
    body = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    return body.split("</think>\n\n", 1)[-1]  # 4.6 writes an empty thought before the last answer


@pytest.mark.parametrize("family, fmt", [("4.5", "json"), ("4.6", "xml")])
def test_format_is_read_from_the_template(family, fmt):
    assert detect_format(_template(family)) == fmt
    assert detect_format("{{ messages[0].content }}") is None


@pytest.mark.parametrize("family", ["4.5", "4.6"])
def test_template_rendering_of_calls_parses_back(family):
    source = _template(family)
    fmt = detect_format(source)
    for n in (1, 2, 4):
        for content in ("", "Let me check."):
            text = _assistant_text(source, CALLS[:n], content)
            got_content, calls = split_calls(text, fmt, TOOLS)
            assert got_content == content
            assert [(c.name, json.loads(c.arguments)) for c in calls] == CALLS[:n]
            assert len({c.id for c in calls}) == n
            # streamed in random slices: the same content and calls
            rng = random.Random(n)
            ts, out, i = ToolStream(fmt, TOOLS), [], 0
            while i < len(text):
                k = rng.randint(1, 7)
                out += ts.feed(text[i:i + k])
                i += k
            out += ts.flush()
            streamed = [x for x in out if not isinstance(x, str)]
            assert [(c.name, json.loads(c.arguments)) for c in streamed] == CALLS[:n]
            assert "".join(x for x in out if isinstance(x, str)).strip() == content


def test_text_that_is_not_a_call_stays_content():
    for fmt in ("json", "xml"):
        text = "I would call <tool_call>\nnot a call\n</tool_call> but no."
        assert split_calls(text, fmt, TOOLS) == (text, [])
        out = ToolStream(fmt, TOOLS).feed(text)
        assert "".join(out) == text


@pytest.mark.parametrize("family", ["4.5", "4.6"])
def test_tool_choice_grammar_accepts_the_template_shape(family, store):
    """The grammar for tool_choice=required (and named) takes the template's own rendering of calls,
    token by token through llama.cpp's grammar sampler, and refuses a call of another function."""
    from minicpmv_edge.edge_runtime.engine import Model

    source = _template(family)
    fmt = detect_format(source)
    res = store.converted("minicpmv-4.5" if family == "4.5" else "minicpmv-4.6")
    model = Model(str(res.text_path), vocab_only=True)
    try:
        cases = [(call_grammar(fmt, TOOLS, "required", True), CALLS[:2], True),
                 (call_grammar(fmt, TOOLS, "required", False), CALLS[:1], True),
                 (call_grammar(fmt, TOOLS, "required", False), CALLS[:2], False),
                 (call_grammar(fmt, TOOLS, {"type": "function", "function": {"name": "now"}}, False), [CALLS[1]],
                  True),
                 (call_grammar(fmt, TOOLS, {"type": "function", "function": {"name": "now"}}, False), [CALLS[0]],
                  False)]
        for grammar, calls, ok in cases:
            text = _assistant_text(source, calls)
            assert _accepts(model, grammar, text) == ok, (calls, ok)
    finally:
        model.close()


def _accepts(model, grammar, text: str) -> bool:
    import ctypes

    import llama_cpp as L

    g = grammar.sampler(model)
    try:
        for tok in model.tokenize(text):
            one = L.llama_token_data(tok, 1.0, 0.0)
            arr = L.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
            L.llama_sampler_apply(g, ctypes.byref(arr))
            if arr.data[0].logit == float("-inf"):
                return False
            L.llama_sampler_accept(g, tok)
        eog = next(t for t in range(model.n_vocab) if model.is_eog(t))  # complete: only an end token may follow
        one = L.llama_token_data(eog, 1.0, 0.0)
        arr = L.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        L.llama_sampler_apply(g, ctypes.byref(arr))
        return arr.data[0].logit != float("-inf")
    finally:
        L.llama_sampler_free(g)


def test_bad_tools_are_refused():
    from minicpmv_edge.errors import InputError

    for tools, word in (([], "non-empty"), ([{"type": "function"}], "tools[0]"),
                        ([{"type": "function", "function": {"name": "a b"}}], "name"),
                        ([{"type": "function", "function": {"name": "a"}}] * 2, "twice"),
                        ([{"type": "function", "function": {"name": "a", "parameters": {"type": "array"}}}],
                         "parameters")):
        with pytest.raises(InputError, match=re.escape(word)):
            check_tools(tools)
    with pytest.raises(InputError, match="multipleOf"):
        call_grammar("json", check_tools([{"type": "function", "function": {"name": "a", "parameters": {
            "type": "object", "properties": {"x": {"type": "number", "multipleOf": 2}}}}}]), "required", True)
