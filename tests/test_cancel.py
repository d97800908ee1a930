"""Cancelling anywhere leaves a working model: the session's record of the KV cache and
llama.cpp's positions stay equal after an abort at any point of prefill or decode, and
/health says so only when it is true.

The abort is driven through llama.cpp's own abort callback, exactly as `MiniCPMV.cancel()`
does, but it fires at the N-th graph node, so the tests hit chosen points: inside a text
batch, inside an image's embedding batches, between batches, during decode.
"""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest

from minicpmv_edge.edge_runtime import LoadOptions, MiniCPMV
from tests.runtime_helpers import noise_image

LONG = " ".join(f"word{i} and" for i in range(50))  # ~320 tokens of the tiny vocab: ten 32-token batches


class NodeAbort:
    """Installs an abort callback on the model's llama_context that counts graph nodes and,
    from node `at` on, does what cancel() does (sets the abort flag), so llama.cpp stops there."""

    def __init__(self, model: MiniCPMV, at: int | None):
        import llama_cpp as L

        self.L, self.ctx, self.at, self.calls = L, model._ctx, at, 0
        flag = self.ctx._abort

        def cb(_user):
            self.calls += 1
            if self.at is not None and self.calls >= self.at:
                flag.set()
            return flag.is_set()

        self._cb = L.ggml_abort_callback(cb)

    def __enter__(self):
        self.L.llama_set_abort_callback(self.ctx.ptr, self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        self.L.llama_set_abort_callback(self.ctx.ptr, self.ctx._abort_cb, ctypes.c_void_p(0))


def _messages():
    from PIL import Image

    return [{"role": "user", "content": [Image.fromarray(noise_image(640, 480, seed=3)), LONG + " What is it?"]}]


def _prefill_logits(model: MiniCPMV, messages) -> np.ndarray:
    """Logits after a prefill of `messages` (through the session, as chat does)."""
    from minicpmv_edge.edge_runtime.messages import normalize

    turns = normalize(messages, model.limits)
    prompt, bitmaps = model.build_prompt(turns, False)
    model.session.prefill(prompt, bitmaps)
    return model._ctx.logits()


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_abort_at_any_point_keeps_the_model_working(store, family):
    res = store.converted(family)
    model = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=2048, n_batch=32, n_threads=2))
    msgs = _messages()
    ref = model.chat(msgs, temperature=0, max_tokens=6)
    ref_logits = _prefill_logits(model, msgs)  # the same prompt again: the last token re-evaluated
    model.reset()
    with NodeAbort(model, None) as count:  # how many graph nodes a full turn runs (prefill + decode)
        again = model.chat(msgs, temperature=0, max_tokens=6)
    total = count.calls
    assert again.text == ref.text and total > 20
    points = sorted({1, total // 7, total // 3, 2 * total // 3, total - 2})
    for at in points:
        model.reset()  # a cold cache: the abort lands inside this turn's prefill or decode
        with NodeAbort(model, at):
            cut = model.chat(msgs, temperature=0, max_tokens=6)
        assert cut.finish_reason == "cancelled", at
        assert model.health() is None, (at, model.session.consistency_problem())
        top = model._ctx.pos_max()
        assert top < model._ctx.n_past or (top == -1 and model._ctx.n_past == 0), at
        after = model.chat(msgs, temperature=0, max_tokens=6)  # reuses what survived, evaluates the rest
        assert after.finish_reason != "cancelled" and after.text == ref.text, at
        assert model.health() is None
        # numerically the same state as a model that never saw an abort (last token re-evaluated)
        np.testing.assert_allclose(_prefill_logits(model, msgs), ref_logits, rtol=0, atol=2e-3 * np.abs(ref_logits).max())
    model.close()


def test_abort_during_a_follow_up_turn_keeps_the_history(store):
    """A cut in turn 2 must not lose turn 1's cache (the record is cut back to what survived)."""
    res = store.converted("minicpmv-4.5")
    model = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=2048, n_batch=32, n_threads=2))
    msgs = _messages()
    first = model.chat(msgs, temperature=0, max_tokens=4)
    turn2 = msgs + [{"role": "assistant", "content": first.text}, {"role": "user", "content": LONG}]
    with NodeAbort(model, 40):
        assert model.chat(turn2, temperature=0, max_tokens=4).finish_reason == "cancelled"
    assert model.health() is None and model.session.units  # cut back, not thrown away
    reused_before = model.counters.prompt_tokens_reused
    done = model.chat(turn2, temperature=0, max_tokens=4)
    assert done.finish_reason in ("stop", "length")
    # turn 1's prompt (all but the generation prefix, which turn 2 re-renders) came from the cache
    assert model.counters.prompt_tokens_reused - reused_before >= first.usage["prompt_tokens"] - 8
    fresh = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=2048, n_batch=32, n_threads=2))
    assert fresh.chat(turn2, temperature=0, max_tokens=4).text == done.text
    fresh.close()
    model.close()


def test_cancel_from_another_thread_during_prefill(store):
    """The public cancel(), called while a long prefill runs, returns 'cancelled' and leaves a working model."""
    res = store.converted("minicpmv-4.5")
    model = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=4096, n_batch=16, n_threads=1))
    msgs = [{"role": "user", "content": LONG * 4}]
    started = threading.Event()
    with NodeAbort(model, None) as count:
        count.at = None

        def watch():
            while count.calls < 50:  # prefill is under way
                time.sleep(0.001)
            started.set()
            model.cancel()

        t = threading.Thread(target=watch)
        t.start()
        r = model.chat(msgs, temperature=0, max_tokens=4)
        t.join()
    assert started.is_set() and r.finish_reason == "cancelled" and r.usage["completion_tokens"] == 0
    assert model.health() is None
    assert model.chat(msgs, temperature=0, max_tokens=4).finish_reason in ("stop", "length")
    model.close()


def test_health_reports_a_corrupt_cache(store):
    """The check behind /health compares with llama.cpp's memory, not with our own bookkeeping."""
    res = store.converted("minicpmv-4.5")
    model = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=1024, n_threads=2))
    model.chat([{"role": "user", "content": "Hello there"}], temperature=0, max_tokens=2)
    assert model.health() is None
    model._ctx.decode(model.model.tokenize(" stray"))  # llama.cpp holds tokens the session never recorded
    problem = model.health()
    assert problem and "session recorded" in problem
    # the next turn notices and starts from a clean cache instead of answering from a corrupt one
    r = model.chat([{"role": "user", "content": "Hello there"}], temperature=0, max_tokens=2)
    assert r.finish_reason in ("stop", "length") and model.health() is None
    model.close()


class _BlockingChunk:
    """In the server's slot pool: the first prompt chunk waits until its slot is cancelled (the
    server's disconnect path), then runs with the slot's abort flag set, so llama.cpp aborts it."""

    def __init__(self, pool):
        self.sched = pool.shared.scheduler
        self.reached, self.released, self.done = threading.Event(), threading.Event(), threading.Event()
        self.slot, self.aborted = None, False

    def __enter__(self):
        from minicpmv_edge.errors import Cancelled

        orig = self._orig = self.sched._do_call

        def do_call(call):
            if not call.abortable or self.reached.is_set():
                return orig(call)
            self.slot = call.slot
            self.reached.set()
            if call.slot._abort.wait(30):
                self.released.set()
            orig(call)
            self.aborted = isinstance(call.error, Cancelled)
            self.done.set()

        self.sched._do_call = do_call
        return self

    def __exit__(self, *exc):
        self.sched._do_call = self._orig


@pytest.fixture()
def live_server(store):
    import socket

    import httpx
    import uvicorn

    from minicpmv_edge.edge_runtime.server import ServerConfig, create_app

    res = store.converted("minicpmv-4.5")
    holder = {}

    def load():
        holder["model"] = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=4096, n_batch=16, n_threads=1))
        return holder["model"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServerConfig(model_id="v45", parallel=2, n_ctx=4096), load)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    yield url, port, holder["model"], res, app.state.server.worker.pool
    server.should_exit = True
    thread.join(timeout=15)


def test_server_survives_a_client_that_leaves_during_prefill(live_server):
    import json
    import socket

    import httpx

    url, port, model, res, pool = live_server
    body = {"model": "v45", "messages": [{"role": "user", "content": LONG * 3}], "max_tokens": 4, "temperature": 0}
    raw = json.dumps(body).encode()
    with _BlockingChunk(pool) as hook:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        assert hook.reached.wait(60), "the request never reached prefill"
        sock.close()  # the client leaves while its prompt is being prefilled
        assert hook.released.wait(30), "the server did not cancel the abandoned request"
        assert hook.slot._abort.is_set()
        assert hook.done.wait(60), "the cancelled prompt chunk never returned"
    assert hook.aborted, "the prompt chunk was not aborted inside llama_decode"
    h = httpx.get(url + "/health", timeout=10)
    assert h.status_code == 200 and h.json() == {"status": "ok"}, h.text
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    fresh = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=4096, n_batch=16, n_threads=1))
    want = fresh.chat(body["messages"], temperature=0, max_tokens=4).text
    fresh.close()
    assert r.json()["choices"][0]["message"]["content"] == want
    assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_health_tells_the_truth(live_server):
    import httpx

    url, _, model, _, pool = live_server
    body = {"model": "v45", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "temperature": 0}
    first = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert first.status_code == 200
    # the slot that served it (the only one holding a conversation) gets tokens its session never recorded
    served = [s for s in pool._slots if s.history]
    assert len(served) == 1
    served[0].ctx.decode(model.model.tokenize(" stray"))
    h = httpx.get(url + "/health", timeout=10)
    assert h.status_code == 503 and h.json()["status"] == "error" and "session recorded" in h.json()["detail"]
    # the conversation's next turn goes to that slot, whose session finds and repairs the difference
    follow = {**body, "messages": body["messages"] + [first.json()["choices"][0]["message"],
                                                      {"role": "user", "content": "Again"}]}
    assert httpx.post(url + "/v1/chat/completions", json=follow, timeout=60).status_code == 200  # heals itself
    assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}


def test_a_cancel_is_not_an_error(store, caplog):
    """llama.cpp reports an aborted decode as errors; ours asked for it, so they are logged at debug
    (a Ctrl-C or a client leaving prints nothing alarming), and a stale cancel() of an earlier answer
    does not stop the next prefill-ahead."""
    import logging

    from PIL import Image

    res = store.converted("minicpmv-4.5")
    model = MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=4096, n_batch=16, n_threads=1))
    caplog.set_level(logging.DEBUG, logger="minicpmv_edge")
    with NodeAbort(model, 40):
        r = model.chat([{"role": "user", "content": LONG * 4}], temperature=0, max_tokens=4)
    assert r.finish_reason == "cancelled"
    aborts = [x for x in caplog.records if "failed to decode, ret = 2" in x.getMessage()]
    assert aborts and all(x.levelno == logging.DEBUG for x in aborts)  # llama.cpp said it; we kept it quiet
    assert not [x for x in caplog.records if x.levelno >= logging.WARNING], caplog.text[-2000:]
    model.cancel()  # nothing runs: the flag stays set until something clears it
    image = Image.fromarray(noise_image(200, 150, seed=4))
    pre = model.prefill([{"role": "user", "content": [image]}])
    assert pre.images_encoded >= 1 and pre.n_cached > pre.n_evaluated > 0
    r = model.chat([{"role": "user", "content": [image, "What is it?"]}], temperature=0, max_tokens=2)
    assert r.finish_reason in ("stop", "length") and r.timings.prompt_tokens_evaluated < 32
    assert model.health() is None
    model.close()
