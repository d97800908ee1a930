"""4.6's state snapshots: one cheap sequence copy per turn, never a full state serialisation, and
the restored state gives exactly what llama.cpp gives when it evaluates the same tokens from scratch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.engine import Context, Model
from tests.runtime_helpers import noise_image

GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=16)


@pytest.fixture(scope="module")
def v46(store):
    return store.converted("minicpmv-4.6")


def _feed(ctx: Context, tokens: list[int]) -> np.ndarray:
    ctx.decode(tokens)
    return ctx.logits()


def test_restored_snapshot_equals_a_cold_evaluation(v46):
    """Sequence copy into the spare sequence and back: bit-identical logits to a context that never
    saw the abandoned branch (same batch split), and different ones without the restore."""
    model = Model(str(v46.text_path))
    assert not model.can_truncate  # Qwen3.5's recurrent layers: the reason snapshots exist
    rng = np.random.default_rng(0)
    a, b, c = ([int(t) for t in rng.integers(10, 200, n)] for n in (40, 30, 25))
    cold = Context(model, n_ctx=512, n_threads=2)
    _feed(cold, a)
    want = _feed(cold, c)
    ctx = Context(model, n_ctx=512, n_threads=2)
    _feed(ctx, a)
    ctx.snapshot()
    _feed(ctx, b)  # a branch the next prompt abandons
    assert ctx.restore() and ctx.n_past == len(a)
    assert np.array_equal(_feed(ctx, c), want)
    assert ctx.restore()  # the snapshot outlives a restore
    assert np.array_equal(_feed(ctx, c), want)
    ctx.restore()
    _feed(ctx, b)
    assert not np.allclose(_feed(ctx, c), want, atol=1e-3)  # without the restore the state differs
    assert ctx.n_state_saves == 0
    ctx.clear()
    assert not ctx.restore()  # clearing the memory drops the snapshot too
    for c_ in (cold, ctx):
        c_.close()
    model.close()


def test_one_snapshot_per_turn_and_no_state_serialisation(v46):
    m = MiniCPMV(v46.text_path, v46.mmproj_path, n_ctx=2048, n_threads=2)
    img = Image.fromarray(noise_image(448, 448, seed=4))
    msgs = [{"role": "user", "content": [img, "Describe the picture."]}]
    r1 = m.chat(msgs, **GREEDY)
    assert (m.counters.state_snapshots, m.counters.state_restores) == (1, 0)
    before = m.counters.snapshot()
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "What colour dominates?"}]
    r2 = m.chat(msgs, **GREEDY)
    assert (m.counters.state_snapshots, m.counters.state_restores) == (2, 1)
    # turn 2 starts from the snapshot taken before turn 1's generation prefix: the whole first prompt
    # but that prefix is reused, and only the answer and the new question are evaluated
    reused = m.counters.prompt_tokens_reused - before.prompt_tokens_reused
    tail = len(m.model.tokenize(m.format.thinking_prefix_off))
    assert reused == r1.usage["prompt_tokens"] - tail
    assert r2.timings.prompt_tokens_evaluated == r2.usage["prompt_tokens"] - reused
    # the same greedy answer as a model that evaluates the whole conversation cold
    cold = MiniCPMV(v46.text_path, v46.mmproj_path, n_ctx=2048, n_threads=2)
    assert cold.chat(msgs, **GREEDY).raw == r2.raw
    # asking the same again (regenerate): back to the snapshot, the generation prefix re-evaluated;
    # the snapshot already sits where the prompt diverges, so no new one is taken
    r3 = m.chat(msgs, **GREEDY)
    assert r3.raw == r2.raw and r3.timings.prompt_tokens_evaluated == tail
    assert (m.counters.state_snapshots, m.counters.state_restores) == (2, 2)
    assert m._ctx.n_state_saves == 0 and cold._ctx.n_state_saves == 0
    for x in (m, cold):
        x.close()


def test_models_that_can_truncate_take_no_snapshots(store):
    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=1024, n_threads=2)
    assert not m._ctx.can_snapshot
    msgs = [{"role": "user", "content": "Hello"}]
    r = m.chat(msgs, **GREEDY)
    m.chat(msgs + [{"role": "assistant", "content": r.text}, {"role": "user", "content": "More."}], **GREEDY)
    assert m.counters.state_snapshots == 0 and m._ctx.n_state_saves == 0
    m.close()
