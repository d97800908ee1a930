"""The C bridge renders prompts without jinja (mobile_bridge/src/transcript.cpp, from the facts in
the GGUF or family_facts.h); its bytes equal the jinja rendering of the model's own chat template
(the Python runtime's, proven equal to transformers in test_chat_template.py) for every
conversation shape the bridge supports, and after a generated reply the KV cache is cut back to
where the template's history form of that reply diverges (thinking prefix and <think> dropped)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minicpmv_edge import model_facts_c
from minicpmv_edge.edge_runtime.api import MiniCPMV
from minicpmv_edge.edge_runtime.media import load_image
from minicpmv_edge.edge_runtime.messages import Turn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
import mcv_bridge  # noqa: E402

FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"]
IMG = None  # an image part
SP = "\u3000\u2028\x1c\xa0"  # whitespace Python's str.strip() removes beyond ASCII
# (role, parts) per turn; every shape the bridge's API can build
CONVERSATIONS = [
    [("user", [IMG, "What is in the image?"])],
    [("user", ["plain text, no image"])],
    [("system", ["You are terse."]), ("user", ["Hi", IMG, "and", IMG]), ("assistant", ["Two images."]),
     ("user", ["Which is brighter? 图片 🦊"])],
    [("user", ["a", "b"]), ("assistant", ["c"]), ("user", ["d", IMG])],
    [("system", ["  sys \n"]), ("user", ["  padded ", IMG, " after\t"]), ("assistant", [" spaced \n\n"]),
     ("user", [SP + "next" + SP])],
    [("user", ["   ", IMG, "  "]), ("assistant", ["\n"]), ("user", [" ", "x", " "])],
    [("user", ["Q1"]), ("assistant", ["<think>\nstep\n</think>\n\nA1"]), ("user", ["Q2"]),
     ("assistant", ["\n<think>r</think>A2 "]), ("user", [IMG, "Q3"])],
    [("system", ["S"]), ("user", [IMG]), ("assistant", ["</think>only"]), ("user", [IMG, IMG, "two more"])],
]


@pytest.fixture(scope="module")
def bridge():
    build = mcv_bridge.build("plain", jni=True, napi=True)
    lib = mcv_bridge.load_library(build / "libminicpmv_edge_bridge.so")
    lib.mcv_set_log_callback(None, None)
    return mcv_bridge.Bridge(lib)


@pytest.fixture(scope="module")
def image_png(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray((np.random.RandomState(0).rand(300, 400, 3) * 255).astype("uint8")).save(p)
    return p


def _feed(bridge, s, conv, image_png):
    lib = bridge.lib
    for role, parts in conv:
        if role != "user":
            bridge.check(lib.mcv_session_end_turn(s), s)
        for p in parts:
            rc = (lib.mcv_session_add_image_file(s, str(image_png).encode()) if p is None
                  else lib.mcv_session_add_text(s, mcv_bridge.ROLE[role], p.encode()))
            bridge.check(rc, s)


def test_family_facts_header_is_generated():
    assert (ROOT / "mobile_bridge/src/family_facts.h").read_text() == model_facts_c.header(), \
        "regenerate: python -m minicpmv_edge.model_facts_c mobile_bridge/src/family_facts.h"


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_prompt_equals_jinja(store, bridge, image_png, family):
    res = store.converted(family)
    py = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=512)
    img = load_image(image_png)
    model = bridge.load(str(res.text_path), str(res.mmproj_path), n_ctx=4096)
    s = bridge.session(model)
    lib = bridge.lib
    try:
        for conv in CONVERSATIONS:
            for thinking in ([False, True] if py.format.thinking_supported else [False]):
                bridge.check(lib.mcv_session_reset(s), s)
                bridge.check(lib.mcv_session_set_thinking(s, int(thinking)), s)
                _feed(bridge, s, conv, image_png)
                turns = [Turn(role, [img if p is None else p for p in parts]) for role, parts in conv]
                assert bridge.prompt_text(s) == py.build_prompt(turns, thinking)[0], (conv, thinking)
        # the template's rules the bridge enforces instead of rendering something else
        bridge.check(lib.mcv_session_reset(s), s)
        bridge.check(lib.mcv_session_add_text(s, 1, b"hi"), s)
        assert lib.mcv_session_add_text(s, 0, b"late system") == -1  # MCV_ERR_INVALID_ARG
        bridge.check(lib.mcv_session_end_turn(s), s)
        bridge.check(lib.mcv_session_add_text(s, 2, b"an answer"), s)
        assert bridge.generate(s, max_tokens=2)[0] == -14  # MCV_ERR_STATE: ends with an assistant turn
    finally:
        lib.mcv_session_free(s)
        lib.mcv_model_free(model)
        py.close()


OPEN_REPLY = "<|im_start|>assistant\n"  # where the template's reply starts (4.5, 4.6: ChatML)


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_bridge_rewrites_replies_and_reuses_the_cache(store, bridge, family):
    """Generated replies become their history form; the next answer equals a fresh session's and
    the Python runtime's, with fewer tokens evaluated."""
    res = store.converted(family)
    py = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048)
    model = bridge.load(str(res.text_path), str(res.mmproj_path), n_ctx=2048)
    cached, fresh = bridge.session(model), bridge.session(model)
    lib = bridge.lib
    try:
        msgs = []
        for turn, (question, thinking) in enumerate([("Hello there", True), ("Again, shorter", False),
                                                     ("And a third time", True)]):
            msgs.append({"role": "user", "content": question})
            bridge.check(lib.mcv_session_set_thinking(cached, int(thinking)), cached)
            bridge.check(lib.mcv_session_add_text(cached, 1, question.encode()), cached)
            want_prompt = py.build_prompt(_turns(py, msgs), thinking)[0]
            if turn:
                assert want_prompt.startswith(reused)
            assert bridge.prompt_text(cached) == want_prompt, turn
            rc, reply = bridge.generate(cached, max_tokens=6)
            assert rc == 0
            n_cached = bridge.stats(cached).n_prefill_tokens
            # the reply as the transcript holds it (raw bytes: random weights emit broken UTF-8 at times)
            transcript = bridge.prompt_text(cached, with_prefix=False)
            assert transcript.startswith(want_prompt)
            raw_reply = transcript[len(want_prompt):]

            bridge.check(lib.mcv_session_reset(fresh), fresh)
            bridge.check(lib.mcv_session_set_thinking(fresh, int(thinking)), fresh)
            for m in msgs:
                if m["role"] == "assistant":
                    bridge.check(lib.mcv_session_end_turn(fresh), fresh)
                text = m["content"].encode("utf-8", "surrogateescape")
                bridge.check(lib.mcv_session_add_text(fresh, mcv_bridge.ROLE[m["role"]], text), fresh)
            assert bridge.prompt_text(fresh) == want_prompt
            rc, fresh_reply = bridge.generate(fresh, max_tokens=6)
            assert reply == fresh_reply, turn  # the cut-back cache gives a fresh session's answer...
            if turn:  # ...reusing the whole conversation up to the previous reply (its prefix is re-evaluated)
                assert n_cached <= bridge.stats(fresh).n_prefill_tokens - len(py.model.tokenize(reused)), turn
            if all(isinstance(m["content"], str) and not _broken(m["content"]) for m in msgs):
                py.reset()  # the whole prompt tokenised at once, as in the fresh session: Python's tokens
                want = py.chat(msgs, enable_thinking=thinking, temperature=0, repeat_penalty=1.0, max_tokens=6)
                assert fresh_reply.replace("\ufffd", "") == want.raw, turn  # (broken bytes: U+FFFD vs dropped)
            msgs.append({"role": "assistant", "content": raw_reply})
            reused = want_prompt[:want_prompt.rindex(OPEN_REPLY) + len(OPEN_REPLY)]  # what the cache keeps
    finally:
        lib.mcv_session_free(cached)
        lib.mcv_session_free(fresh)
        lib.mcv_model_free(model)
        py.close()


def _broken(text: str) -> bool:
    return any(0xDC80 <= ord(c) <= 0xDCFF for c in text)  # surrogateescape'd invalid UTF-8


def _turns(m, msgs):
    from minicpmv_edge.edge_runtime.messages import normalize

    return normalize(msgs, m.limits)
