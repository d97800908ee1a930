"""The parallel slot pool (edge_runtime/pool.py, slots.py) on the tiny 4.5 and 4.6 fixtures:
several conversations decoded together in one llama.cpp context answer as each does alone
(tests/pool_helpers.py says what "as alone" certifies), a follow-up takes the slot that holds its
conversation and reuses its KV cache (4.6: its recurrent snapshot), cancelling one slot leaves the
others untouched, and decoding never waits for more than one prompt chunk or image slice."""

from __future__ import annotations

import collections
import threading
import time

import pytest

from minicpmv_edge.edge_runtime import MiniCPMV, QueueFull, SlotPool
from minicpmv_edge.errors import InputError
from tests.pool_helpers import assert_same_answer
from tests.runtime_helpers import noise_image

FAMILIES = ["minicpmv-4.5", "minicpmv-4.6"]
GREEDY = dict(temperature=0, repeat_penalty=1.0, logprobs=True, top_logprobs=5)
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
          "required": ["name", "n"]}


def _image(w, h, seed):
    return {"type": "image", "image": noise_image(w, h, seed)}


def eight_requests() -> list[tuple[list, dict]]:
    """Different images, prompts and features: thinking, a JSON schema, two images, a sliced image,
    text only, a stop string, sampling penalties."""
    def user(*parts):
        return [{"role": "user", "content": list(parts)}]

    return [
        (user(_image(64, 48, 1), "What is in this picture?"), dict(max_tokens=24)),
        (user(_image(96, 64, 2), "Think about the colours first."), dict(max_tokens=24, enable_thinking=True)),
        (user(_image(48, 80, 3), "Name it and count it, as JSON."), dict(max_tokens=40, json_schema=SCHEMA)),
        (user(_image(64, 64, 4), _image(80, 48, 5), "Compare the two pictures."), dict(max_tokens=20)),
        (user(_image(700, 500, 6), "Describe the large picture."), dict(max_tokens=16)),
        (user("No picture this time: tell me a story."), dict(max_tokens=28, stop=["zz"])),
        (user(_image(72, 72, 7), "One word?"), dict(max_tokens=12, presence_penalty=0.5, repeat_penalty=1.1)),
        (user(_image(64, 48, 8), "And this one?"), dict(max_tokens=20)),
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, store):
    folder = store.converted(request.param).text_path.parent
    m = MiniCPMV.from_folder(folder, n_ctx=2048, n_threads=1)
    yield m
    m.close()


def _alone(model: MiniCPMV, msgs, kw):
    model.reset()  # a fresh conversation, as a lone user would start it
    return model.chat(msgs, **{**GREEDY, **kw})


def _one_call_between_steps(trace) -> None:
    """Between two consecutive generated tokens of any slot at most one call ran (one prompt chunk
    or one image slice): a slot that decodes never stalls longer than that."""
    last_step: dict[int, tuple[int, int]] = {}  # seq -> (its last position, calls seen since)
    for kind, what in trace:
        if kind == "call":
            for seq, (pos, calls) in last_step.items():
                last_step[seq] = (pos, calls + 1)
            continue
        for seq, pos in what:
            prev = last_step.get(seq)
            if prev is not None and prev[0] + 1 == pos:
                assert prev[1] <= 1, f"sequence {seq} waited through {prev[1]} calls between positions {prev[0]}, {pos}"
            last_step[seq] = (pos, 0)


def test_concurrent_requests_answer_as_alone(model):
    reqs = eight_requests()
    alone = [_alone(model, msgs, kw) for msgs, kw in reqs]
    with SlotPool(model, slots=4, n_ctx=2048) as pool:
        pool.shared.scheduler.trace = collections.deque()
        if not model.model.can_truncate:  # recurrent layers: the slots decode through unrepacked weights
            assert not pool.shared.model.params.use_extra_bufts
        handles = [pool.submit(msgs, **{**GREEDY, **kw}) for msgs, kw in reqs]
        served = [h.result(timeout=600) for h in handles]
        stats = pool.stats()
        trace = list(pool.shared.scheduler.trace)
    identical = [assert_same_answer(a, s) for a, s in zip(alone, served)]
    assert sum(identical) >= 6, identical  # a tie at rounding level is rare; most answers are identical
    assert all(r.finish_reason in ("stop", "length") for r in served)
    # they were decoded together: steps of several tokens, more tokens than steps, 8 requests on 4 slots
    assert stats.max_batch >= 2 and stats.step_tokens > stats.steps, stats
    assert stats.requests["ok"] == 8 and stats.completion_tokens == sum(r.usage["completion_tokens"] for r in served)
    assert any(kind == "step" and len(what) >= 3 for kind, what in trace)
    _one_call_between_steps(trace)


def test_follow_up_takes_its_slot_and_reuses_the_cache(model):
    q1 = [{"role": "user", "content": [_image(80, 60, 11), "What is it?"]}]
    other = [{"role": "user", "content": [_image(60, 80, 12), "Something else?"]}]
    kw = dict(max_tokens=12)
    with SlotPool(model, slots=2, n_ctx=2048) as pool:
        first = pool.submit(q1, **{**GREEDY, **kw})
        r1 = first.result(timeout=300)
        pool.submit(other, **{**GREEDY, **kw}).result(timeout=300)  # the other slot, or a cleared one
        q2 = q1 + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And the colours?"}]
        before = [c.snapshot() for c in pool.slot_counters()]
        second = pool.submit(q2, **{**GREEDY, **kw})
        r2 = second.result(timeout=300)
        after = pool.slot_counters()
        slot_ctx = pool._slots[second.slot].ctx
        assert second.slot == first.slot
        reused = after[second.slot].prompt_tokens_reused - before[second.slot].prompt_tokens_reused
        assert reused >= r1.usage["prompt_tokens"] // 2, (reused, r1.usage)
        assert after[second.slot].images_encoded == before[second.slot].images_encoded  # nothing re-encoded
        if not model.model.can_truncate:  # 4.6: the slot's recurrent state came back from its snapshot
            assert after[second.slot].state_restores > before[second.slot].state_restores
            assert slot_ctx.n_state_saves == 0
        assert pool.health() is None
        # the first question again (a regenerate) goes back to that slot too, and answers as the first time
        again = pool.submit(q1, **{**GREEDY, **kw})
        assert_same_answer(r1, again.result(timeout=300))
        assert again.slot == first.slot and pool.health() is None
    model.reset()
    model.chat(q1, **{**GREEDY, **kw})
    lone2 = model.chat(q2, **{**GREEDY, **kw})  # the same two turns alone (the second on the first's cache)
    assert_same_answer(lone2, r2)


def test_cancelling_one_leaves_the_others_unchanged(model):
    reqs = eight_requests()[:3]
    alone = [_alone(model, msgs, kw) for msgs, kw in reqs]
    long = [{"role": "user", "content": "Write a very long story."}]
    with SlotPool(model, slots=4, n_ctx=2048) as pool:
        victim = pool.submit(long, temperature=0, max_tokens=1500, ignore_eos=True)
        others = [pool.submit(msgs, **{**GREEDY, **kw}) for msgs, kw in reqs]
        pieces = iter(victim)
        next(pieces)  # it is generating, beside the others
        victim.cancel()
        list(pieces)
        v = victim.result(timeout=300)
        served = [h.result(timeout=300) for h in others]
        assert v.finish_reason == "cancelled" and v.usage["completion_tokens"] < 1500
        for a, s in zip(alone, served):
            assert_same_answer(a, s)
        assert pool.health() is None
        msgs0, kw0 = reqs[0]
        again = pool.submit(msgs0, **{**GREEDY, **kw0}).result(timeout=300)  # the cancelled slot serves as usual
        assert_same_answer(alone[0], again)
        assert pool.stats().requests["cancelled"] == 1


def test_cancel_during_a_prompt_and_in_the_queue(model):
    """A slot cancelled inside its prompt (an image's chunks) cuts only its own sequence back; a
    request cancelled in the queue never starts."""
    big = [{"role": "user", "content": [_image(900, 700, 21), _image(800, 600, 22), "Describe both."]}]
    msgs, kw = eight_requests()[0]
    lone = _alone(model, msgs, kw)
    with SlotPool(model, slots=2, n_ctx=2048) as pool:
        runner = pool.submit(msgs, **{**GREEDY, **kw})
        heavy = pool.submit(big, temperature=0, max_tokens=8)
        queued = pool.submit(msgs, temperature=0, max_tokens=8)
        deadline = time.monotonic() + 120
        while heavy.t_start is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        heavy.cancel()
        queued.cancel()
        assert_same_answer(lone, runner.result(timeout=300))
        h = heavy.result(timeout=300)
        q = queued.result(timeout=300)
        assert h.finish_reason == "cancelled"
        assert q.finish_reason == "cancelled" and q.usage["completion_tokens"] == 0
        assert pool.health() is None
        again = pool.submit(msgs, **{**GREEDY, **kw}).result(timeout=300)
        assert_same_answer(lone, again)


def test_arguments_and_the_bounded_queue(model):
    msgs, kw = eight_requests()[0]
    with SlotPool(model, slots=1, n_ctx=1024, max_queue=0) as pool:
        busy = pool.submit(msgs, temperature=0, max_tokens=300, ignore_eos=True)
        with pytest.raises(QueueFull) as full:
            pool.submit(msgs, max_tokens=2)
        assert full.value.retry_after >= 1
        busy.cancel()
        busy.result(timeout=300)
        with pytest.raises(TypeError):
            pool.submit(msgs, stream=True)
        with pytest.raises(InputError):
            pool.submit(msgs, n=0)
        bad = pool.submit(msgs, no_such_argument=1)
        with pytest.raises(TypeError):
            bad.result(timeout=60)
        two = pool.submit(msgs, n=2, seed=7, temperature=1.0, max_tokens=6)
        two.result(timeout=300)
        assert len(two.choices) == 2
    model.reset()
    assert model.chat(msgs, seed=8, temperature=1.0, max_tokens=6).raw == two.choices[1].raw  # choice i: seed + i
    with pytest.raises(InputError):
        SlotPool(model, slots=0)
    with pytest.raises(InputError):
        SlotPool(model, slots=2, n_ctx=10**9)  # the KV cache of both slots cannot fit


def test_many_threads_share_one_pool(model):
    """pool.chat() from several threads at once: each gets its own answer (the alone answer)."""
    reqs = eight_requests()[:4]
    alone = [_alone(model, msgs, kw) for msgs, kw in reqs]
    out: dict[int, object] = {}
    with SlotPool(model, slots=4, n_ctx=2048) as pool:
        def run(i):
            msgs, kw = reqs[i]
            out[i] = pool.chat(msgs, **{**GREEDY, **kw})

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    for i, a in enumerate(alone):
        assert_same_answer(a, out[i])
