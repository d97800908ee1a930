"""Multi-turn KV reuse under the real chat templates, which rewrite history: earlier assistant
turns lose their <think> block and the thinking prefix, so the next prompt diverges inside the
previous one. Every turn's answer must equal a fresh, uncached evaluation of the same prompt
(greedy, identical tokens), while the counters show that the shared prefix was reused:
4.5 (Qwen3, KV cut back) and 4.6 (Qwen3.5 hybrid: recurrent state restored from a snapshot)."""

from __future__ import annotations

import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.session import EmbeddingCache
from tests.runtime_helpers import noise_image

GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=12)


def _history(turn: int, r) -> dict:
    """Three ways a client hands an answer back; the template drops the reasoning in each."""
    if turn == 0:
        return {"role": "assistant", "content": f"<think>\n{r.reasoning or 'thinking'}\n</think>\n\n{r.text}"}
    if turn == 1:
        return {"role": "assistant", "content": r.text, "reasoning_content": r.reasoning or "more thinking"}
    return {"role": "assistant", "content": r.raw}


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_every_turn_equals_a_fresh_evaluation(store, family):
    res = store.converted(family)
    cached = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    fresh = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    a, b = (Image.fromarray(noise_image(448, 448, s)) for s in (21, 22))
    questions = [[a, "What is in the image?"], "Think about the colours.", [b, "Compare with this one."],
                 "Summarise."]
    thinking = [True, False, True, False]
    msgs: list[dict] = []
    prev = None
    try:
        for turn, (q, think) in enumerate(zip(questions, thinking)):
            msgs.append({"role": "user", "content": q})
            before = cached.counters.snapshot()
            got = cached.chat(msgs, enable_thinking=think, **GREEDY)
            after = cached.counters
            prompt = cached.build_prompt(_turns(cached, msgs), think)[0]

            fresh.reset()
            fresh.session.cache = EmbeddingCache()  # no KV, no image embeddings: everything evaluated
            want = fresh.chat(msgs, enable_thinking=think, **GREEDY)
            assert got.raw == want.raw, f"turn {turn}"
            assert got.usage["prompt_tokens"] == want.usage["prompt_tokens"]
            assert fresh.counters.prompt_tokens_reused == 0

            if prev is not None:
                # the template rewrote the previous answer: its reasoning is gone from the prompt...
                assert "</think>" not in prompt.split("<|im_start|>assistant\n")[-2]
                # ...yet everything before the previous answer came from the cache
                reused = after.prompt_tokens_reused - before.prompt_tokens_reused
                assert reused >= prev.usage["prompt_tokens"] - 8, (turn, reused, prev.usage)
                # only the rewritten answer and the new turn were evaluated (the dropped tail is <= 8)
                new = got.timings.prompt_tokens_evaluated
                assert new <= got.usage["prompt_tokens"] - prev.usage["prompt_tokens"] + 8
                decoded = got.usage["completion_tokens"] - (1 if got.finish_reason == "stop" else 0)
                assert after.tokens_evaluated - before.tokens_evaluated == new + decoded
            msgs.append(_history(turn, got))
            prev = got
        assert cached.counters.images_encoded == 2  # each image encoded once in the whole conversation
    finally:
        cached.close()
        fresh.close()


def _turns(m, msgs):
    from minicpmv_edge.edge_runtime.messages import normalize

    return normalize(msgs, m.limits)
