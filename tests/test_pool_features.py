"""Everything MiniCPMV.chat does keeps working in a slot of the parallel pool, served concurrently:
tool calls through the model's own chat template (the grammar of tool_choice, thinking before the
call), video (4.5 packing), and the 4.7 / OCR canvas positions with their recurrent snapshots. Each
concurrent answer is compared with the same request answered alone (tests/pool_helpers.py)."""

from __future__ import annotations

import pytest

from minicpmv_edge.edge_runtime import MiniCPMV, SlotPool
from tests.pool_helpers import assert_same_answer
from tests.runtime_helpers import make_video, noise_image
from tests.test_tool_calling import START, TOOLS, _check_calls

GREEDY = dict(temperature=0, repeat_penalty=1.0, logprobs=True, top_logprobs=5)


def _concurrently(model: MiniCPMV, reqs: list[tuple[list, dict]], slots: int):
    """Each request alone (a fresh conversation), then all of them at once in a pool."""
    alone = []
    for msgs, kw in reqs:
        model.reset()
        alone.append(model.chat(msgs, **{**GREEDY, **kw}))
    with SlotPool(model, slots=slots, n_ctx=2048) as pool:
        handles = [pool.submit(msgs, **{**GREEDY, **kw}) for msgs, kw in reqs]
        served = [h.result(timeout=900) for h in handles]
        stats = pool.stats()
        assert pool.health() is None
    assert stats.max_batch >= 2, stats  # they were decoded together
    return alone, served


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_tool_calls_in_slots(store, family):
    res = store.converted(family)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=1)
    named = {"type": "function", "function": {"name": "get_time"}}
    reqs = [
        (START, dict(tools=TOOLS, tool_choice="required", max_tokens=120, parallel_tool_calls=False)),
        (START, dict(tools=TOOLS, tool_choice=named, max_tokens=80)),
        (START, dict(tools=TOOLS, tool_choice="required", enable_thinking=True, thinking_budget=6, max_tokens=160,
                     parallel_tool_calls=False)),
        ([{"role": "user", "content": [{"type": "image", "image": noise_image(64, 48, 3)}, "What is it?"]}],
         dict(tools=TOOLS, max_tokens=24)),
    ]
    try:
        alone, served = _concurrently(m, reqs, slots=4)
    finally:
        m.close()
    identical = [assert_same_answer(a, s) for a, s in zip(alone, served)]
    assert sum(identical) >= 3, identical
    # the grammar of tool_choice forced a call in each slot (greedy on random weights may spend the
    # tokens inside the call's free whitespace: then it ends at the length, still inside the call)
    for r in served[:3]:
        assert r.raw.split("</think>")[-1].lstrip().startswith("<tool_call>"), r.raw
        assert r.finish_reason in ("tool_calls", "length"), r
        if r.finish_reason == "tool_calls":
            _check_calls([c.as_openai() for c in r.tool_calls])
    assert "get_time" in served[1].raw and all(c.name == "get_time" for c in served[1].tool_calls)
    assert served[2].reasoning  # thought first, then the call (the grammar waited for the end of thinking)
    for a, s in zip(alone, served):
        if a.raw == s.raw:
            assert [(c.name, c.arguments) for c in s.tool_calls] == [(c.name, c.arguments) for c in a.tool_calls]


def test_video_in_a_slot(store, tmp_path):
    res = store.converted("minicpmv-4.5")
    clip = make_video(tmp_path / "clip.mp4", frames=24, fps=12, size=(160, 96))
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=1)
    reqs = [
        ([{"role": "user", "content": [{"type": "video", "video": str(clip), "fps": 4}, "What happens?"]}],
         dict(max_tokens=16)),
        ([{"role": "user", "content": [{"type": "image", "image": noise_image(80, 60, 5)}, "And here?"]}],
         dict(max_tokens=24)),
        ([{"role": "user", "content": [{"type": "video", "video": str(clip), "fps": 6, "packing": 2}, "Summarize."]}],
         dict(max_tokens=12)),
    ]
    try:
        alone, served = _concurrently(m, reqs, slots=3)
    finally:
        m.close()
    for a, s in zip(alone, served):
        assert_same_answer(a, s)
    assert served[0].usage["prompt_tokens"] > 64 * 3  # frames were in the prompt


@pytest.mark.parametrize("family", ["minicpmv-4.7", "minicpm-ocr-1.0"])
def test_canvas_families_in_slots(store, family):
    """Canvas M-RoPE positions (fewer positions than tokens) and the recurrent snapshot per slot."""
    res = store.converted(family)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=1)
    q1 = [{"role": "user", "content": [{"type": "image", "image": noise_image(700, 500, 2)},
                                       "What is in the picture?"]}]
    # canvas images are decoded one embedding row per call (index-causal), each call alternating with a
    # step of the slots decoding: the two text-only requests decode together while the images go in
    reqs = [(q1, dict(max_tokens=40)),
            ([{"role": "user", "content": [{"type": "image", "image": noise_image(300, 420, 7)}, "Read it."]}],
             dict(max_tokens=40)),
            ([{"role": "user", "content": "No image: a short story."}], dict(max_tokens=48)),
            ([{"role": "user", "content": "Another one, about a boat."}], dict(max_tokens=40))]
    try:
        alone, served = _concurrently(m, reqs, slots=4)
        for a, s in zip(alone, served):
            assert_same_answer(a, s)
        # a follow-up in the pool takes the slot of its conversation and restores its snapshot
        q2 = q1 + [{"role": "assistant", "content": "A picture."}, {"role": "user", "content": "And the colours?"}]
        with SlotPool(m, slots=2, n_ctx=4096) as pool:
            first = pool.submit(q1, **GREEDY, max_tokens=8)
            first.result(timeout=600)
            before = [c.snapshot() for c in pool.slot_counters()]
            second = pool.submit(q2, **GREEDY, max_tokens=8)
            r2 = second.result(timeout=600)
            after = pool.slot_counters()[second.slot]
            assert second.slot == first.slot
            assert after.images_encoded == before[second.slot].images_encoded
            assert r2.timings.prompt_tokens_evaluated < r2.usage["prompt_tokens"] // 2
            assert pool.health() is None
        m.reset()
        m.chat(q1, **GREEDY, max_tokens=8)
        assert_same_answer(m.chat(q2, **GREEDY, max_tokens=8), r2)
    finally:
        m.close()
