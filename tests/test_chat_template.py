"""Prompts come from the model's own chat template: our rendering (minicpmv_edge.chat_template
+ edge_runtime.prompt) is byte-identical to the real templates rendered by transformers, with
images expanded by the real processors (tests/template_reference.py), over many conversation
shapes; and the converter stores the checkpoint's template verbatim."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge import model_facts
from minicpmv_edge.chat_template import ChatTemplate
from minicpmv_edge.edge_runtime.media import MediaLimits
from minicpmv_edge.edge_runtime.messages import Turn, normalize
from minicpmv_edge.edge_runtime.prompt import PromptFormat
from minicpmv_edge.errors import InputError
from minicpmv_edge.gguf_info import read_info
from tests import template_reference as ref

FAMILIES = ["minicpmv-4.5", "minicpmv-4.6"]
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def _img(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


A, B, C = _img(448, 448, 1), _img(1000, 600, 2), _img(300, 200, 3)  # whole, sliced 3x2-ish, small
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & later for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. Zürich"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}

# (name, messages, render kwargs); messages in the model cards' form
SHAPES = [
    ("text", [{"role": "user", "content": "Hello"}], {}),
    ("system", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], {}),
    ("one image", [{"role": "user", "content": [A, "What is in the image?"]}], {}),
    ("sliced image", [{"role": "user", "content": [B, "Describe it."]}], {"enable_thinking": False}),
    ("two images", [{"role": "user", "content": [A, C, "Compare them"]}], {}),
    ("text between images", [{"role": "user", "content": ["Look:", A, "and", B, "then answer."]}], {}),
    ("images across turns", [{"role": "user", "content": [A, "What?"]}, {"role": "assistant", "content": "Noise."},
                             {"role": "user", "content": [C, "And this one?"]}], {"enable_thinking": False}),
    ("thinking on", [{"role": "user", "content": "Why is the sky blue?"}], {"enable_thinking": True}),
    ("thinking off", [{"role": "user", "content": [A, "Why?"]}], {"enable_thinking": False}),
    ("thinking unset", [{"role": "system", "content": "S"}, {"role": "user", "content": "Why?"}], {}),
    ("answer with think block", [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nstep one\nstep two\n</think>\n\nAnswer one."},
        {"role": "user", "content": "Q2"}], {"enable_thinking": True}),
    ("several answers with think blocks", [
        {"role": "system", "content": "You reason."}, {"role": "user", "content": [A, "Q1"]},
        {"role": "assistant", "content": "<think>\nr1\n</think>\n\nA1"}, {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "\n<think>r2</think>A2 "}, {"role": "user", "content": "Q3"}],
     {"enable_thinking": False}),
    ("answer with reasoning_content", [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "because"},
        {"role": "user", "content": "Q2"}], {"enable_thinking": True}),
    ("whitespace around text", [{"role": "system", "content": "  sys \n"},
                                {"role": "user", "content": ["  padded question \n", C]},
                                {"role": "assistant", "content": " spaced answer \n\n"},
                                {"role": "user", "content": "\tnext\n"}], {}),
    ("unicode", [{"role": "system", "content": "你好，助手"}, {"role": "user", "content": ["Café 🦊 e\u0301", B]}],
     {"enable_thinking": True}),
    ("tools", [{"role": "user", "content": "Weather in Paris?"}], {"tools": [WEATHER]}),
    ("tools and system", [{"role": "system", "content": "Use tools."}, {"role": "user", "content": [A, "Weather?"]}],
     {"tools": [WEATHER], "enable_thinking": False}),
]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return {"minicpmv-4.6": ref.processor_46(tmp_path_factory.mktemp("proc46")),
            "minicpmv-4.5": (ref.tokenizer_45(), ref.image_processor_45())}


def _reference(family, references, messages, **kw):
    if family == "minicpmv-4.6":
        return ref.reference_46(references[family], messages, **kw)
    tok, improc = references[family]
    return ref.reference_45(tok, improc, messages, **kw)


def _format(family) -> PromptFormat:
    return PromptFormat(model_facts.by_name(family), ChatTemplate(ref.real_template(family), SPECIAL))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,messages,kw", SHAPES, ids=[s[0] for s in SHAPES])
def test_prompt_equals_transformers(family, references, name, messages, kw):
    fmt = _format(family)
    turns = normalize(messages, MediaLimits())
    ours = fmt.render(turns, ref.MARKER, kw.get("enable_thinking"), kw.get("tools"))
    want = _reference(family, references, messages, **kw)
    assert ours.text == want, name
    n_images = sum(isinstance(c, Image.Image) for m in messages if isinstance(m["content"], list) for c in m["content"])
    assert len(ours.media) == n_images and ours.text.count(ref.MARKER) == n_images
    if n_images:
        assert ("<image_id>0</image_id>" + ref.MARKER) in ours.text


TOOL_TURNS = [  # assistant tool calls and tool results (OpenAI shape); rendered by the template itself
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}}]},
    {"role": "tool", "content": "18 C"}, {"role": "tool", "content": "24 C"},
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("thinking", [None, True])
def test_tool_call_history_equals_transformers(family, references, thinking):
    fmt = _format(family)
    turns = [Turn(m["role"], [m["content"]], {k: v for k, v in m.items() if k not in ("role", "content")})
             for m in TOOL_TURNS]
    kw = {} if thinking is None else {"enable_thinking": thinking}
    ours = fmt.render(turns, ref.MARKER, thinking, [WEATHER]).text
    assert ours == _reference(family, references, TOOL_TURNS, tools=[WEATHER], **kw)
    assert "<tool_response>\n18 C\n</tool_response>" in ours


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_tail_is_what_history_drops(family):
    fmt = _format(family)
    msgs = [{"role": "user", "content": "Q"}]
    for thinking, tail in ((True, "<think>\n"), (False, "<think>\n\n</think>\n\n")):
        r = fmt.render(normalize(msgs, MediaLimits()), ref.MARKER, thinking)
        assert r.tail == tail and r.text.endswith("<|im_start|>assistant\n" + tail)
        assert r.in_think is thinking
    unset = fmt.render(normalize(msgs, MediaLimits()), ref.MARKER, None)
    # 4.5's template writes nothing without enable_thinking; 4.6's treats it as false
    assert unset.tail == ("" if family == "minicpmv-4.5" else "<think>\n\n</think>\n\n")


def test_template_errors_are_input_errors():
    fmt = _format("minicpmv-4.6")
    with pytest.raises(InputError, match="System message must be at the beginning"):
        fmt.render([Turn("user", ["a"]), Turn("system", ["b"]), Turn("user", ["c"])], ref.MARKER)
    with pytest.raises(InputError, match="System message cannot contain images"):
        fmt.render(normalize([{"role": "user", "content": "x"}], MediaLimits())[:0]
                   + [Turn("system", [normalize([{"role": "user", "content": [A]}], MediaLimits())[0].parts[0]]),
                      Turn("user", ["q"])], ref.MARKER)
    with pytest.raises(InputError, match="image placeholder"):  # typed text that looks like an image
        _format("minicpmv-4.5").render([Turn("user", ["see (<image>./</image>)"])], ref.MARKER)
    with pytest.raises(InputError, match="media marker"):
        fmt.render([Turn("user", ["a " + ref.MARKER])], ref.MARKER)
    with pytest.raises(InputError, match="no thinking mode"):
        PromptFormat(model_facts.by_name("minicpmv-2.6"), ChatTemplate("{{ messages[0].content }}")).render(
            [Turn("user", ["a"])], ref.MARKER, True)


def test_sandbox_and_transformers_environment():
    t = ChatTemplate("{{ x | tojson }}|{% for i in [1,2,3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
                     "|{{ bos_token }}|{% set ns = namespace(a=1) %}{{ ns.a }}")
    assert t.render([], x={"b": "<&>", "a": "é"}, bos_token="<s>") == '{"b": "<&>", "a": "é"}|1|<s>|1'
    with pytest.raises(InputError, match="sandbox"):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render([])
    with pytest.raises(InputError, match="sandbox|refused"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([])
    with pytest.raises(InputError, match="does not parse"):
        ChatTemplate("{% if %}")


@pytest.mark.parametrize("family", ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"])
def test_converter_stores_the_checkpoint_template_verbatim(store, family):
    import json

    src = store.checkpoint(family)
    cfg = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").exists() else {}
    jinja = src / "chat_template.jinja"
    want = cfg.get("chat_template") or (jinja.read_text() if jinja.exists() else None)
    assert want, f"{family} fixture has no chat template"
    info = read_info(store.converted(family).text_path)
    assert info.get("tokenizer.chat_template") == want
