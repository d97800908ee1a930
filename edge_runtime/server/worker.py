"""The server's admission in front of the slot pool (edge_runtime/pool.py).

Up to `parallel` requests run at once, each in a slot of one llama.cpp context (their generated
tokens decoded together, one llama_decode per step); up to `max_queue` more wait for a slot, and
beyond that a request gets 429 with a Retry-After. A request takes its place before its images
are decoded (`reserve`), so decoding work is bounded too. Each request is a `Job`; the pool's
events for it (pieces, each choice's result, the end or an error) are handed to the event loop
with `call_soon_threadsafe`. Cancelling a job (the client went away, its time ran out) cancels
its pool request: queued, it never starts; running, its slot stops at the next token (or
inside the prompt chunk being decoded) and the other slots go on unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..pool import Request, SlotPool

log = logging.getLogger("minicpmv_edge.edge_runtime.server")


@dataclass
class Job:
    """Events: ("piece", (choice, Piece)), ("choice", (choice, ChatResult)) after each of the `n`
    choices, then ("done", [ChatResult]) or ("error", exception)."""

    turns: list
    kwargs: dict  # MiniCPMV.chat keyword arguments
    loop: asyncio.AbstractEventLoop
    n: int = 1  # choices, generated one after another in the slot (a given seed: seed + choice)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""  # "disconnect" | "timeout" | "shutdown"
    request: Request | None = None
    slot: int | None = None

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: server shutting down
            pass


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__("queue full")
        self.retry_after = retry_after


class Worker:
    def __init__(self, model, max_queue: int, parallel: int | None = None, n_ctx: int | None = None):
        self.model = model
        self.max_queue = max_queue
        self.pool = SlotPool(model, slots=parallel, n_ctx=n_ctx)
        self._lock = threading.Lock()
        self._waiting = 0  # reserved, not started yet (decoding images, or queued in the pool)
        self._running = 0

    @property
    def parallel(self) -> int:
        return self.pool.slots

    # --- event-loop side --------------------------------------------------------
    def reserve(self) -> None:
        """Take a place before the request's images are decoded: a free slot, else a queue place."""
        with self._lock:
            free = self.pool.slots - self._running
            if self._waiting >= self.max_queue + max(0, free):
                raise QueueFull(self.pool.retry_after())
            self._waiting += 1

    def release(self) -> None:
        """Give back a reserved place (the request failed before it was submitted)."""
        with self._lock:
            self._waiting -= 1

    def queue_depth(self) -> int:
        """Requests admitted that have no slot yet."""
        with self._lock:
            return max(0, self._waiting - max(0, self.pool.slots - self._running))

    def submit(self, job: Job) -> None:
        """Hand a job that holds a reserved place to the pool."""
        state = {"started": False}

        def listener(kind: str, value) -> None:
            if kind == "start":
                with self._lock:
                    self._waiting -= 1
                    self._running += 1
                state["started"] = True
                job.slot = value
                return
            if kind in ("done", "error"):
                with self._lock:
                    if state["started"]:
                        self._running -= 1
                    else:  # cancelled while queued
                        self._waiting -= 1
                if job.cancelled.is_set() and kind == "error":
                    kind, value = "done", None  # aborted: nobody is waiting for details
            job.emit(kind, value)

        try:
            job.request = self.pool.submit(job.turns, n=job.n, listener=listener, **job.kwargs)
        except BaseException:
            self.release()
            raise
        if job.cancelled.is_set():
            job.request.cancel()

    def cancel(self, job: Job, reason: str) -> None:
        if not job.cancelled.is_set():
            job.reason = reason
            job.cancelled.set()
        if job.request is not None:
            job.request.cancel()

    def retry_after(self) -> int:
        return self.pool.retry_after()

    def close(self) -> None:
        self.pool.close()
