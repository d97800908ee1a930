"""Comparing an answer served in a slot of the parallel pool with the same request answered alone.

A slot's prompt is evaluated exactly as a lone MiniCPMV.chat evaluates it, but its generated tokens
share a llama_decode with the other slots' tokens, and llama.cpp computes a batch of rows with other
kernels than a single row (llamafile's tinyBLAS vs ggml's vector dot products; edge_runtime/slots.py):
the logits then differ in their last bits (measured on the F16 fixtures: 3.3e-3 in a logit, 5.3e-3 in a
log-probability after 16 steps). So the
answers are the same token for token, except where the lone run itself had a tie at that level: the
comparison certifies each step either as the same token with the same log-probability (within
`TOL`), or as a divergence at a numerical tie (the lone run's choice and the slot's choice within
`EPS` of each other in the lone run's own log-probabilities), after which the two answers are
different conversations and are not compared further. Anything else -- another token at a clear
margin, a log-probability off by more than rounding (a slot seeing another slot's KV would be far
off) -- fails.
"""

from __future__ import annotations

# |log-probability difference| of the same token: rounding of the batched kernels, which also reaches
# the KV cache and so grows a little along an answer (measured: up to 5.3e-3 after 16 steps)
TOL = 1.5e-2
EPS = 3e-2  # a lone run's top-2 gap below this is a tie that rounding may break either way


def compare_steps(alone: list[tuple[int, float, dict]], slot: list[tuple[int, float, dict]]) -> int | None:
    """Steps as (token id, logprob, {token id: logprob} of the best rivals). Returns None when the
    answers are the same token for token, else the step of a certified tie where they part."""
    for k, (a, b) in enumerate(zip(alone, slot)):
        if a[0] == b[0]:
            # float rounding is relative: a grammar-forced token far down the distribution (logprob -35 over the
            # real 248k vocabulary) carries a proportionally larger absolute error; and batched rounding feeds back
            # through every generated token, so it grows with the step (4.7 canvas answer: 0.047 at step 39 of
            # a -8.4 logprob). Another slot's KV would move logprobs by whole nats from the first step.
            tol = TOL + 1e-3 * abs(a[1]) + 1e-3 * k
            assert abs(a[1] - b[1]) <= tol, f"step {k}: same token {a[0]} but logprob {a[1]:.6f} alone vs {b[1]:.6f}"
            continue
        rival = a[2].get(b[0])
        assert rival is not None and a[1] - rival <= EPS, (
            f"step {k}: the slot chose {b[0]} where the lone run chose {a[0]} at a clear margin "
            f"({a[1]:.5f} vs {rival})")
        return k
    assert len(alone) == len(slot), f"same tokens, but {len(alone)} steps alone and {len(slot)} in the slot"
    return None


def steps_of(result) -> list[tuple[int, float, dict]]:
    """From a ChatResult made with logprobs=True, top_logprobs >= 2."""
    return [(e.token_id, e.logprob, {t.token_id: t.logprob for t in e.top}) for e in result.logprobs]


def assert_same_answer(alone, slot) -> bool:
    """ChatResults of the same request: True when identical, False when they part at a certified tie."""
    k = compare_steps(steps_of(alone), steps_of(slot))
    if k is None:
        assert slot.raw == alone.raw and slot.text == alone.text and slot.reasoning == alone.reasoning
        assert slot.finish_reason == alone.finish_reason and slot.usage == alone.usage
        assert [c.name for c in slot.tool_calls] == [c.name for c in alone.tool_calls]
        return True
    assert slot.usage["prompt_tokens"] == alone.usage["prompt_tokens"]
    return False
