"""Serve several conversations at once from one loaded model: `SlotPool`.

    from minicpmv_edge.edge_runtime import MiniCPMV, SlotPool
    m = MiniCPMV.from_folder("out/v46")
    pool = SlotPool(m, slots=4)                      # one llama.cpp context, 4 sequences
    r = pool.chat(messages, temperature=0)           # thread-safe: call it from many threads
    req = pool.submit(messages, max_tokens=64)       # or a handle: iterate its pieces, cancel it
    for piece in req: print(piece.text, end="")
    req.result()                                     # the ChatResult

Each slot answers with the single-conversation code of MiniCPMV.chat (prompts, images, video,
thinking, tools, grammars, sampling, logprobs: every argument means the same), on its own sequence
of a shared llama.cpp context; slots.py batches the slots' generated tokens into one llama_decode
per step. A request waits in a queue until a slot is free, then takes the free slot whose last
conversation it continues (see SlotPool._choose), so a follow-up question reuses that slot's KV
cache (and a recurrent model's snapshot) as a lone MiniCPMV would. `MiniCPMV.chat` itself stays one
conversation on its own context.
"""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from minicpmv_edge.errors import Cancelled, EdgeError, InputError

from .api import MiniCPMV
from .engine import physical_cores
from .messages import Turn, normalize
from .results import ChatResult, Timings
from .session import Session
from .slots import SharedContext, SlotContext

log = logging.getLogger(__name__)

MAX_SLOTS = 64
_WATCH_S = 0.02


def default_parallel(kv_bytes_per_slot: int, available: int, cores: int | None = None) -> int:
    """Slots when none are asked for: 4 on a machine of 2 or more cores (decode is memory-bound, so a
    step of 4 sequences costs little more than one), 1 on a single core; fewer when the KV cache of
    all slots would take more than half of the available memory."""
    n = 4 if (cores or physical_cores()) >= 2 else 1
    while n > 1 and kv_bytes_per_slot and available and n * kv_bytes_per_slot > available // 2:
        n -= 1
    return n


def size_slots(info, n_ctx: int, slots: int | None, on_gpu: bool = False) -> int:
    """The slot count for the text model `info` (gguf_info) at `n_ctx` positions per slot: `slots`
    checked (range, and the KV cache of all slots against available memory), or the default."""
    from .load_checks import available_memory, kv_cache_bytes

    per_slot, have = kv_cache_bytes(info, n_ctx), available_memory()
    if slots is None:
        slots = default_parallel(per_slot, have)
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
        raise InputError(f"parallel (--parallel) must be between 1 and {MAX_SLOTS} slots, got {slots!r}")
    if per_slot and have and not on_gpu and slots * per_slot > have:
        raise InputError(f"parallel (--parallel) {slots} x n_ctx (-c) {n_ctx} needs about "
                         f"{slots * per_slot / 2**30:.1f} GiB of KV cache but this machine has "
                         f"{have / 2**30:.1f} GiB available; use fewer slots or a smaller -c")
    return slots


class QueueFull(EdgeError):
    """The pool's queue of waiting requests is full; `retry_after`: seconds worth waiting."""

    def __init__(self, retry_after: int):
        super().__init__("the request queue is full")
        self.retry_after = retry_after


@dataclass
class PoolStats:
    """Counts since the pool started, and its state now (the server's /metrics reads these)."""

    slots: int = 0
    slots_busy: int = 0
    queued: int = 0
    requests: dict = field(default_factory=lambda: collections.Counter())  # outcome -> count
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    completion_tokens: int = 0
    images_encoded: int = 0
    encode_seconds: float = 0.0
    prefill_seconds: float = 0.0  # prompt evaluation without the image encodes
    decode_seconds: float = 0.0
    steps: int = 0
    step_tokens: int = 0
    max_batch: int = 0


class Request:
    """A submitted conversation. Iterate it for the answer's pieces (every choice's, in order);
    `result()` waits for the first choice's ChatResult, `choices` holds all of them; `cancel()` stops it
    (queued: it never starts; running: it ends with finish_reason 'cancelled')."""

    _ids = itertools.count(1)

    def __init__(self, turns: list[Turn], kwargs: dict, n: int, listener, key: str):
        self.id = next(self._ids)
        self.turns, self.kwargs, self.n, self.key = turns, kwargs, n, key
        self.listener = listener  # callable(kind, value) on the slot's thread, instead of the iterator
        self.slot: int | None = None
        self.choices: list[ChatResult] = []
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.t_submit = time.monotonic()
        self.t_start: float | None = None
        self._events: queue.Queue = queue.Queue()
        self._done = threading.Event()

    # events: ("start", slot), ("piece", (choice, Piece)), ("choice", (choice, ChatResult)),
    # then ("done", [ChatResult]) or ("error", exception)
    def _emit(self, kind: str, value) -> None:
        if self.listener is not None:
            try:
                self.listener(kind, value)
            except Exception:  # noqa: BLE001 - a listener's failure must not take the slot down
                log.exception("request %d: listener failed on %s", self.id, kind)
        else:
            self._events.put((kind, value))

    def _end(self, kind: str, value) -> None:
        self._emit(kind, value)
        self._done.set()
        if self.listener is None:
            self._events.put(("end", None))

    def __iter__(self):
        if self.listener is not None:
            raise InputError("this request reports to its listener; it cannot also be iterated")
        while True:
            kind, value = self._events.get()
            if kind == "piece":
                yield value[1]
            elif kind == "error":
                raise value
            elif kind == "end":
                return

    def result(self, timeout: float | None = None) -> ChatResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} is still running")
        if self.error is not None:
            raise self.error
        return self.choices[0]

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        self.cancelled.set()


def conversation_key(turns: list[Turn]) -> str:
    """The conversation as one string (images by their pixel hash): slots are matched to requests by
    the longest common start of these."""
    out = []
    for t in turns:
        out.append(f"\x1e{t.role}\x1f")
        for p in t.parts:
            if isinstance(p, str):
                out.append(p)
            else:
                digest = getattr(p, "digest", None) or getattr(getattr(p, "source", None), "label", type(p).__name__)
                out.append(f"\x1d{digest}\x1d")
    return "".join(out)


class _Serialized:
    """An encoder whose compute runs on the scheduler thread, one call at a time between steps."""

    _METHODS = ("encode", "encode_chunk")

    def __init__(self, inner, ctx: SlotContext):
        self._inner, self._ctx = inner, ctx

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if name in self._METHODS and callable(value):
            return lambda *a, **k: self._ctx.call(lambda: value(*a, **k), abortable=True)
        return value


class _SlotVision(_Serialized):
    """mtmd's Vision for one slot: encodes and image-embedding decodes go through the scheduler."""

    def decode_image_chunk(self, ctx, chunk, embd) -> None:
        ctx.call(lambda: self._inner.decode_image_chunk(ctx, chunk, embd), abortable=True)


class _SlotModel(MiniCPMV):
    """MiniCPMV.chat on one slot: the loaded model's state, with this slot's context, session and lock."""

    def __init__(self, base: MiniCPMV, ctx: SlotContext, video_lock: threading.Lock):  # noqa: D107
        object.__setattr__(self, "_base", base)
        self._ctx = ctx
        self.session = _slot_session(base.session, ctx)
        self._lock = threading.Lock()
        self._health = None
        self._video_lock = video_lock
        self.last_result = None
        self.last_notices = []

    def __getattr__(self, name):  # everything else is the loaded model's
        return getattr(self._base, name)

    def expand_videos(self, *args, **kwargs):
        with self._video_lock:  # the video recipe (decoders, notices) is one object for all slots
            return MiniCPMV.expand_videos(self, *args, **kwargs)

    def render(self, *args, **kwargs):
        rendered, bitmaps = MiniCPMV.render(self, *args, **kwargs)
        for bm in bitmaps:
            if bm.embed is not None:  # 4.5's packed video groups encode lazily: on the scheduler too
                bm.embed = (lambda f: lambda: self._ctx.call(f, abortable=True))(bm.embed)
        return rendered, bitmaps

    def close(self) -> None:  # the model is the base's; the context is the pool's
        pass


def _slot_session(base: Session, ctx: SlotContext) -> Session:
    """A Session like the model's own, on `ctx`, with its encoders reached through the scheduler."""
    if base.planner is not None:  # processor-exact images (4.6, OCR, 4.7): one planner per slot
        s = Session(ctx, None, base.cache)
        planner = copy.copy(base.planner)
        planner.encoder = _Serialized(base.planner.encoder, ctx)
        if base.planner.external is not None:
            planner.external = _Serialized(base.planner.external, ctx)
        planner.counters = s.counters
        planner.last_ids, planner.last_positions = [], None
        s.planner = planner
        return s
    vision = _SlotVision(base.vision, ctx) if base.vision is not None else None
    encoder = _Serialized(base.encoder, ctx) if base.encoder is not None else None
    return Session(ctx, vision, base.cache, encoder=encoder)


class _Slot:
    def __init__(self, index: int, ctx: SlotContext, view: _SlotModel):
        self.index, self.ctx, self.view = index, ctx, view
        self.history = ""  # conversation_key of what its KV cache holds (the last request + answer)
        self.current: Request | None = None
        self.next: Request | None = None
        self.last_used = 0.0


class SlotPool:
    """Up to `slots` conversations at once on one loaded MiniCPMV (see the module docstring).

    `slots`: sequences decoded together (default: default_parallel); `n_ctx`: positions per slot
    (default: the model's n_ctx; 0: its training context), so the KV cache holds slots * n_ctx
    cells; `max_queue`: requests that may wait for a slot (None: no limit; beyond it submit() raises
    QueueFull)."""

    def __init__(self, model: MiniCPMV, slots: int | None = None, n_ctx: int | None = None,
                 max_queue: int | None = None):
        from dataclasses import replace

        from minicpmv_edge.gguf_info import read_info

        from .load_checks import resolve_n_ctx

        info = read_info(model.model.path)
        n_ctx = resolve_n_ctx(replace(model.options, n_ctx=model.options.n_ctx if n_ctx is None else n_ctx), info)
        slots = size_slots(info, n_ctx, slots, model.options.n_gpu_layers != 0)
        if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0):
            raise InputError(f"max_queue must be a request count >= 0, got {max_queue!r}")
        self.model, self.n_ctx, self.max_queue = model, n_ctx, max_queue
        threads = model.options.n_threads or physical_cores()
        self.shared = SharedContext(self._text_model(model, slots), slots, n_ctx, model.options.n_batch, threads)
        video_lock = threading.Lock()
        self._slots = []
        for k in range(slots):
            ctx = self.shared.slot_context(k)
            self._slots.append(_Slot(k, ctx, _SlotModel(model, ctx, video_lock)))
        self._cv = threading.Condition()
        self._pending: collections.deque[Request] = collections.deque()
        self._closed = False
        self._recent = collections.deque(maxlen=16)  # seconds per finished request (Retry-After)
        self._stats = PoolStats(slots=slots)
        self._threads = [threading.Thread(target=self._serve, args=(s,), name=f"slot-{s.index}", daemon=True)
                         for s in self._slots]
        self._threads.append(threading.Thread(target=self._watch, name="slot-watchdog", daemon=True))
        for t in self._threads:
            t.start()

    def _text_model(self, model: MiniCPMV, slots: int):
        """The text model the slots decode with: the loaded one, except for a recurrent model (4.6,
        4.7, OCR) whose weights llama.cpp repacked: at llama.cpp 0c1e570 a step of several
        sequences through repacked weights gives wrong logits for that architecture (measured on the
        4.6 fixture: other tokens at a clear margin from the second generated token on; one sequence
        at a time is right), so the pool loads its own copy of the weights without repacking."""
        text = model.model
        self._own_model = None
        if slots > 1 and not text.can_truncate and text.params.use_extra_bufts:
            from .engine import Model

            log.info("slot pool: loading the recurrent text model again without weight repacking "
                     "(batches of several sequences need it)")
            text = self._own_model = Model(text.path, n_gpu_layers=model.options.n_gpu_layers,
                                           use_mmap=model.options.use_mmap, extra_buffers=False)
        return text

    @property
    def slots(self) -> int:
        return len(self._slots)

    # --- submitting -------------------------------------------------------------------------------
    def submit(self, messages, *, n: int = 1, listener=None, **chat_kwargs) -> Request:
        """Queue a conversation; returns its Request at once. `chat_kwargs` are MiniCPMV.chat's
        (stream excepted); `n` answers are generated one after another in the slot (with a seed,
        answer i uses seed + i); `listener(kind, value)` receives the request's events on the slot's
        thread instead of the iterator: ("start", slot), ("piece", (i, Piece)), ("choice", (i,
        ChatResult)), then ("done", [ChatResult]) or ("error", exception)."""
        if "stream" in chat_kwargs:
            raise TypeError("submit() streams through the Request it returns; 'stream' is not an argument")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}")
        turns = list(messages) if messages and all(isinstance(m, Turn) for m in messages) \
            else normalize(messages, self.model.limits)
        req = Request(turns, chat_kwargs, n, listener, conversation_key(turns))
        with self._cv:
            if self._closed:
                raise InputError("the slot pool is closed")
            idle = sum(1 for x in self._slots if x.current is None and x.next is None)
            if self.max_queue is not None and len(self._pending) >= self.max_queue + idle:
                raise QueueFull(self._retry_after())
            self._pending.append(req)
            self._dispatch()
        return req

    def chat(self, messages, *, stream: bool = False, **chat_kwargs):
        """MiniCPMV.chat through the pool: a ChatResult, or with stream=True an iterator of Pieces."""
        req = self.submit(messages, **chat_kwargs)
        return iter(req) if stream else req.result()

    def _waiting(self) -> int:
        return len(self._pending) + sum(1 for s in self._slots if s.next is not None)

    def _retry_after(self) -> int:
        import math

        avg = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1, math.ceil(avg * (self._waiting() + 1) / len(self._slots)))

    def retry_after(self) -> int:
        with self._cv:
            return self._retry_after()

    def _dispatch(self) -> None:
        """(under the lock) Give waiting requests, oldest first, the idle slot that suits each best."""
        while self._pending:
            idle = [s for s in self._slots if s.current is None and s.next is None]
            if not idle:
                break
            req = self._pending.popleft()
            if req.cancelled.is_set():
                self._cancelled_before_start(req)
                continue
            best = self._choose(idle, req)
            best.next, req.slot = req, best.index
        self._cv.notify_all()

    @staticmethod
    def _choose(idle: list[_Slot], req: Request) -> _Slot:
        """The slot whose conversation this request continues (it shares at least half of the slot's
        history: a common system prompt alone does not take another user's slot) or repeats (the
        whole request is the start of the slot's history: a regenerate), the longest match first;
        else an empty slot; else the one unused longest."""
        def shared(s: _Slot) -> int:
            return len(os.path.commonprefix([s.history, req.key])) if s.history else 0

        matches = [s for s in idle if s.history and (shared(s) * 2 >= len(s.history) or shared(s) == len(req.key))]
        if matches:
            return max(matches, key=shared)
        return min(idle, key=lambda s: (bool(s.history), s.last_used))

    @staticmethod
    def _cancelled_before_start(req: Request) -> None:
        req.choices = [ChatResult(text="", reasoning="", raw="", finish_reason="cancelled", timings=Timings(),
                                  usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})]
        req._end("done", list(req.choices))

    # --- slot threads ------------------------------------------------------------------------------
    def _serve(self, slot: _Slot) -> None:
        while True:
            with self._cv:
                while slot.next is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                req, slot.next = slot.next, None
                slot.current = req
            t0 = time.monotonic()
            try:
                self._run(slot, req)
            finally:
                with self._cv:
                    slot.current = None
                    slot.last_used = time.monotonic()
                    self._recent.append(slot.last_used - t0)
                    self._dispatch()

    def _run(self, slot: _Slot, req: Request) -> None:
        if req.cancelled.is_set():
            self._cancelled_before_start(req)
            return
        req.t_start = time.monotonic()
        ctx, view = slot.ctx, slot.view
        self.shared.scheduler.join(ctx)
        outcome = "error"
        try:
            req._emit("start", slot.index)
            for i in range(req.n):
                if req.cancelled.is_set():
                    break
                kwargs = dict(req.kwargs)
                if i and kwargs.get("seed") not in (None, -1):
                    kwargs["seed"] = (kwargs["seed"] + i) % (2**32 - 1)
                for piece in view.chat(req.turns, stream=True, **kwargs):
                    req._emit("piece", (i, piece))
                result = view.last_result
                req.choices.append(result)
                self._account(result)
                req._emit("choice", (i, result))
                if result.finish_reason == "cancelled":
                    break
            cancelled = req.cancelled.is_set() or any(r.finish_reason == "cancelled" for r in req.choices)
            outcome = "cancelled" if cancelled else "ok"
            slot.history = req.key + (f"\x1eassistant\x1f{req.choices[0].text}" if req.choices else "")
            req._end("done", list(req.choices))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to its request
            outcome = "cancelled" if isinstance(exc, Cancelled) or req.cancelled.is_set() else "error"
            slot.history = ""
            req.error = exc
            req._end("error", exc)
        finally:
            self.shared.scheduler.leave(ctx)
            with self._cv:
                self._stats.requests[outcome] += 1

    def _account(self, r: ChatResult) -> None:
        t = r.timings
        enc = sum(t.image_encode_ms) / 1e3
        with self._cv:
            s = self._stats
            s.prompt_tokens += r.usage.get("prompt_tokens", 0)
            s.prompt_tokens_evaluated += t.prompt_tokens_evaluated
            s.completion_tokens += r.usage.get("completion_tokens", 0)
            s.images_encoded += len(t.image_encode_ms)
            s.encode_seconds += enc
            s.prefill_seconds += max(0.0, t.prefill_ms / 1e3 - enc)
            s.decode_seconds += t.decode_ms / 1e3

    def _watch(self) -> None:
        """Cancelling is a flag; this makes it reach the running generation (re-fired, so that a
        cancel landing before the generation cleared its abort flag is not lost)."""
        while True:
            time.sleep(_WATCH_S)
            with self._cv:
                if self._closed:
                    return
                for s in self._slots:
                    if s.current is not None and s.current.cancelled.is_set():
                        s.ctx.request_abort()
                if any(r.cancelled.is_set() for r in self._pending):
                    self._pending = collections.deque(r for r in self._pending if not self._drop_if_cancelled(r))

    def _drop_if_cancelled(self, req: Request) -> bool:
        if req.cancelled.is_set():
            self._stats.requests["cancelled"] += 1
            self._cancelled_before_start(req)
            return True
        return False

    # --- state ------------------------------------------------------------------------------------
    def stats(self) -> PoolStats:
        with self._cv:
            s = copy.copy(self._stats)
            s.requests = collections.Counter(self._stats.requests)
            s.slots_busy = sum(1 for x in self._slots if x.current is not None)
            s.queued = self._waiting()
        sched = self.shared.scheduler.stats
        s.steps, s.step_tokens, s.max_batch = sched.steps, sched.step_tokens, sched.max_batch
        return s

    def slot_counters(self) -> list:
        """Each slot's session counters (tokens evaluated, prompt tokens reused, images encoded, ...)."""
        return [s.view.counters for s in self._slots]

    def health(self) -> str | None:
        """None when every idle slot's sequence in llama.cpp holds exactly what its session recorded."""
        for s in self._slots:
            if s.current is None and s.next is None:
                problem = s.view.health()
                if problem:
                    return f"slot {s.index}: {problem}"
        return None

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            for r in self._pending:
                r.cancel()
                self._cancelled_before_start(r)
            self._pending.clear()
            for s in self._slots:
                if s.next is not None:
                    s.next.cancel()
                    self._cancelled_before_start(s.next)
                    s.next = None
                if s.current is not None:
                    s.current.cancel()
                    s.ctx.request_abort()
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)
        self.shared.close()
        if self._own_model is not None:
            self._own_model.close()

    def __enter__(self) -> "SlotPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["SlotPool", "Request", "QueueFull", "PoolStats", "default_parallel"]
