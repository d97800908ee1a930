"""Several sequences in one llama.cpp context, and the scheduler that drives them (behind pool.py).

One llama_context holds every slot's sequence (`n_seq_max` = slots, twice that for models with
recurrent layers, whose snapshots need a spare sequence per slot; one unified KV cache). Each slot
runs the ordinary single-conversation code (session.py, generate.py) on its own thread, on a
`SlotContext`: engine.Context's interface, but every llama.cpp call it makes is handed to one
`Scheduler` thread, which

* batches the one-token decodes of all slots into one `llama_decode` per step, each token on its
  slot's sequence (continuous batching: a slot joins at the next step, leaves after its last token);
* runs every other call alone, one at a time, alternating with the steps: a prompt chunk (at most
  n_batch tokens), an image's embeddings, one image slice through the vision encoder, a cut or a
  snapshot of a sequence. A decoding slot therefore never waits longer than one such call;
* scopes llama.cpp's abort callback to the slot whose prompt chunk is running, so cancelling one
  slot never aborts another's work; a cancelled slot stops at its next token.

Prompt chunks are decoded exactly as a lone MiniCPMV.chat decodes them (same chunks, same positions;
recurrent layers see the same ubatches). Generated tokens share a batch: llama.cpp computes a batch
of several rows with its batched kernels (llamafile's tinyBLAS for F16/Q8_0/Q4_0 weights) and a lone
row with its vector kernels, so logits may differ in the last bits from a lone run (measured on the
F16 fixtures: |dlogit| <= 3.3e-3, tokens equal; see docs/serving.md).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from minicpmv_edge.errors import Cancelled, ContextOverflowError, RuntimeFailure

from .engine import Context, _llama, set_fields

log = logging.getLogger(__name__)

# how long a step waits for slots still choosing their next token (they were woken by the last
# step and usually post within a millisecond; a slow grammar pass must not hold the others back)
GATHER_S = 0.05
# how long a call (seconds of prompt or image work) waits for them: they get their step first
CALL_GATHER_S = 2.0


@dataclass
class SchedulerStats:
    """What the scheduler did since it started (metrics.py exports these)."""

    steps: int = 0  # batched llama_decode calls of generated tokens
    step_tokens: int = 0  # tokens in those steps (step_tokens / steps = mean batch)
    max_batch: int = 0
    calls: int = 0  # calls run alone (prompt chunks, image slices, cache edits)
    step_seconds: float = 0.0
    call_seconds: float = 0.0


class _Work:
    __slots__ = ("slot", "done", "error", "result")

    def __init__(self, slot):
        self.slot, self.done, self.error, self.result = slot, False, None, None


class _Step(_Work):
    __slots__ = ("token", "pos", "logits")

    def __init__(self, slot, token: int, pos: int, logits: bool):
        super().__init__(slot)
        self.token, self.pos, self.logits = token, pos, logits


class _Call(_Work):
    __slots__ = ("fn", "abortable")

    def __init__(self, slot, fn, abortable: bool):
        super().__init__(slot)
        self.fn, self.abortable = fn, abortable


class Scheduler:
    """The one thread that calls llama.cpp for every slot of a SharedContext."""

    def __init__(self, ctx_ptr, model):
        L = _llama()
        self._L, self.ptr, self.model = L, ctx_ptr, model
        self._cv = threading.Condition()
        self._steps: list[_Step] = []
        self._calls: collections.deque[_Call] = collections.deque()
        self._busy: set = set()  # slots given a result that are expected to post again soon
        self._last_step = False
        self._stopped = False
        self.stats = SchedulerStats()
        # the operations run, in order, when `trace` is set to a deque (tests)
        self.trace: collections.deque | None = None
        self._aborting: threading.Event | None = None
        # set only around the calls that may be aborted: llama.cpp asks it at every graph node, and a
        # Python callback there would have to take the GIL each time during the batched steps too
        self._abort_cb = L.ggml_abort_callback(lambda _u: bool(self._aborting is not None and self._aborting.is_set()))
        self._no_cb = L.ggml_abort_callback()  # NULL
        self._thread = threading.Thread(target=self._run, name="slot-scheduler", daemon=True)
        self._thread.start()

    # --- slot side (each slot's own thread) -------------------------------------------------------
    def step(self, slot: "SlotContext", token: int, pos: int, logits: bool) -> None:
        """Decode one token of `slot` at `pos` in the next batched step; its logits land in the slot."""
        self._wait(_Step(slot, int(token), int(pos), bool(logits)), self._steps.append)

    def call(self, slot: "SlotContext", fn, abortable: bool = False):
        """Run `fn()` on the scheduler thread, alone; returns its result or raises its exception.
        `abortable`: a decode that cancelling the slot may interrupt (then it raises Cancelled)."""
        if threading.current_thread() is self._thread:  # already here (a call made inside a call)
            return fn()
        if abortable and slot._abort.is_set():
            raise Cancelled("cancelled before it started")
        return self._wait(_Call(slot, fn, abortable), self._calls.append)

    def join(self, slot) -> None:
        """The slot serves a request: after each of its results, steps wait (briefly) for its next token."""
        with self._cv:
            slot.active = True

    def leave(self, slot) -> None:
        """The slot's request ended: steps no longer wait for it."""
        with self._cv:
            slot.active = False
            self._busy.discard(slot)
            self._cv.notify_all()

    def _wait(self, work: _Work, enqueue):
        with self._cv:
            if self._stopped:
                raise RuntimeFailure("the slot pool is closed")
            self._busy.discard(work.slot)
            enqueue(work)
            self._cv.notify_all()
            while not work.done:
                self._cv.wait()
        if work.error is not None:
            raise work.error
        return work.result

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    # --- scheduler thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._steps or self._calls or self._stopped):
                    self._cv.wait()
                if self._stopped:
                    self._fail_all(RuntimeFailure("the slot pool is closed"))
                    return
                # let the slots woken by the last result post their next token: a call waits
                # longer for them than a step does, so that nobody decoding misses the step
                # between two calls
                t0 = time.monotonic()
                while self._busy and not self._stopped:
                    call_next = bool(self._calls) and (not self._steps or self._last_step)
                    left = t0 + (CALL_GATHER_S if call_next else GATHER_S) - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                # alternate: a call, then a step of everyone decoding, then the next call
                if self._calls and (not self._steps or self._last_step):
                    work: list[_Work] = [self._calls.popleft()]
                    self._last_step = False
                else:
                    work, self._steps = self._steps, []
                    self._last_step = True
            t0 = time.perf_counter()
            if self._last_step:
                self._do_step(work)
                self.stats.step_seconds += time.perf_counter() - t0
            else:
                self._do_call(work[0])
                self.stats.call_seconds += time.perf_counter() - t0
            if self.trace is not None:  # steps: (sequence, position) of each token; calls: the sequence
                self.trace.append(("step", tuple((w.slot.seq, w.pos) for w in work)) if self._last_step
                                  else ("call", work[0].slot.seq))
            with self._cv:
                for w in work:
                    w.done = True
                    if w.slot.active:
                        self._busy.add(w.slot)
                self._cv.notify_all()

    def _fail_all(self, exc: BaseException) -> None:
        for w in list(self._steps) + list(self._calls):
            w.error, w.done = exc, True
        self._steps, self._calls = [], collections.deque()
        self._cv.notify_all()

    def _do_call(self, call: _Call) -> None:
        L = self._L
        self.stats.calls += 1
        if call.abortable:
            self._aborting = call.slot._abort
            L.llama_set_abort_callback(self.ptr, self._abort_cb, None)
        try:
            call.result = call.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the slot's thread
            call.error = exc
        finally:
            if call.abortable:
                L.llama_set_abort_callback(self.ptr, self._no_cb, None)
                self._aborting = None

    def _do_step(self, steps: list[_Step]) -> None:
        L = self._L
        n = len(steps)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for j, s in enumerate(steps):
                batch.token[j] = s.token
                batch.pos[j] = s.pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = s.slot.seq
                batch.logits[j] = 1 if s.logits else 0
            rc = L.llama_decode(self.ptr, batch)
        finally:
            L.llama_batch_free(batch)
        if rc == 1 and n > 1:  # no room in the KV cache for all of them: find who does not fit
            for s in steps:
                self._do_step([s])
            return
        self.stats.steps += 1
        self.stats.step_tokens += n
        self.stats.max_batch = max(self.stats.max_batch, n)
        for j, s in enumerate(steps):
            if rc == 0:
                if s.logits:
                    s.slot._take_logits(j)
            elif rc == 1:
                s.error = ContextOverflowError("the KV cache has no room left for this sequence")
            else:
                s.error = RuntimeFailure(f"llama_decode failed with code {rc}")


class SharedContext:
    """One llama_context with a sequence (and for recurrent models a snapshot sequence) per slot."""

    def __init__(self, model, slots: int, n_ctx_slot: int, n_batch: int = 512, n_threads: int = 1):
        L = _llama()
        self._L, self.model = L, model
        self.slots, self.n_ctx_slot, self.n_batch, self.n_threads = slots, n_ctx_slot, max(n_batch, slots), n_threads
        self.recurrent = not model.can_truncate
        self.n_seq = slots * (2 if self.recurrent else 1)
        params = L.llama_context_default_params()
        # kv_unified: every sequence draws cells from one cache, and a snapshot shares its cells with
        # the sequence it copies (engine.Context); each slot is held to n_ctx_slot positions, so the
        # slots * n_ctx_slot cells never run out
        set_fields(params, n_ctx=slots * n_ctx_slot, n_batch=self.n_batch, n_ubatch=self.n_batch,
                   n_threads=n_threads, n_threads_batch=n_threads, n_seq_max=self.n_seq, kv_unified=True,
                   no_perf=False)
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise RuntimeFailure(f"llama.cpp could not create a context for {slots} slots of {n_ctx_slot} "
                                 "tokens (out of memory?)", model.path)
        self.scheduler = Scheduler(self.ptr, model)

    def slot_context(self, k: int) -> "SlotContext":
        return SlotContext(self, k, self.slots + k)

    def close(self) -> None:
        if getattr(self, "scheduler", None) is not None:
            self.scheduler.close()
            self.scheduler = None
        if getattr(self, "ptr", None):
            self._L.llama_free(self.ptr)
            self.ptr = None


class SlotContext(Context):
    """engine.Context for one slot: its sequence in the shared context; llama.cpp is called only
    through the scheduler (one-token decodes batched with the other slots', everything else alone)."""

    direct_sampling = False  # several slots sample from one batch: each gets a copy of its row

    def __init__(self, shared: SharedContext, seq: int, snap_seq: int):  # noqa: D107 - no llama_context of its own
        self._L, self.model, self.ptr = shared._L, shared.model, shared.ptr
        self._sched = shared.scheduler
        self.n_ctx, self.n_batch, self.n_threads = shared.n_ctx_slot, shared.n_batch, shared.n_threads
        self.n_past = 0
        self.seq, self.snap_seq = seq, snap_seq
        self.can_snapshot = shared.recurrent
        self._snapshot_n_past = None
        self.n_snapshots = self.n_restores = self.n_state_saves = 0
        self._abort = threading.Event()
        self._logits = np.zeros(self.model.n_vocab, np.float32)
        self.active = False  # serving a request (Scheduler.join / leave)

    def call(self, fn, abortable: bool = False):
        return self._sched.call(self, fn, abortable)

    # --- logits: this slot's row of the last batch that computed it ---------------------------------
    def _take_logits(self, i: int) -> None:
        """(scheduler thread) copy output `i` of the batch just decoded into this slot's row."""
        ptr = self._L.llama_get_logits_ith(self.ptr, i)
        np.copyto(self._logits, np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)))

    def logits_view(self) -> np.ndarray:
        return self._logits

    # --- decoding ---------------------------------------------------------------------------------
    def _decode_batch(self, tokens: list[int], want_logits) -> None:
        if len(tokens) == 1:  # a generated token (or a one-token prompt piece): the next batched step
            self._sched.step(self, tokens[0], self.n_past, bool(want_logits(0)))
            self.n_past += 1
            return
        last = bool(want_logits(len(tokens) - 1))

        def chunk():
            Context._decode_batch(self, tokens, want_logits)
            if last:
                self._take_logits(-1)
        self.call(chunk, abortable=True)

    def _decode_rows(self, rows, p, index_causal: bool, want_logits: bool) -> None:
        def chunk():
            Context._decode_rows(self, rows, p, index_causal, want_logits)
            if want_logits:
                self._take_logits(-1)
        self.call(chunk, abortable=True)

    def decode_all_logits(self, tokens: list[int]) -> np.ndarray:
        return self.call(lambda: Context.decode_all_logits(self, tokens), abortable=True)

    # --- this slot's sequences only (never llama_memory_clear: the other slots live there too) --------
    def clear(self) -> None:
        L = self._L

        def rm():
            mem = L.llama_get_memory(self.ptr)
            L.llama_memory_seq_rm(mem, self.seq, -1, -1)
            if self.can_snapshot:
                L.llama_memory_seq_rm(mem, self.snap_seq, -1, -1)
        self.call(rm)
        self.n_past = 0
        self._snapshot_n_past = None

    def snapshot(self) -> None:
        self.call(lambda: Context.snapshot(self))

    def restore(self) -> bool:
        return self.call(lambda: Context.restore(self))

    def save_state(self) -> bytes:
        return self.call(lambda: Context.save_state(self))

    def load_state(self, data: bytes, n_past: int) -> None:
        self.clear()
        L = self._L

        def load():
            import ctypes

            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            return L.llama_state_seq_set_data(self.ptr, buf, len(data), self.seq) == len(data)
        if not self.call(load):
            self.clear()
            raise RuntimeFailure("could not restore a saved sequence state")
        self.n_past = n_past

    def pos_max(self) -> int:
        return self.call(lambda: Context.pos_max(self))

    def cut(self, pos: int) -> bool:
        return self.call(lambda: Context.cut(self, pos))

    def truncate(self, n_keep: int) -> None:
        if n_keep < self.n_past and not self.cut(n_keep):
            self.clear()

    def close(self) -> None:  # the shared context is SharedContext's to free
        pass
