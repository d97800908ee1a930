"""One model, one generation thread, a bounded queue in front of it.

llama.cpp calls run only on the worker thread, so the event loop never blocks on
them. Each request is a `Job`; its events (pieces, the final result, an error) are
handed to the event loop with `call_soon_threadsafe`. Cancelling a job (the client
went away, its time ran out) sets the job's flag; if the job is running, a watchdog
calls `MiniCPMV.cancel()` (llama.cpp's abort callback, checked inside decode)
every few ms until the generation ends, so a cancel that lands before the runtime
cleared its abort flag is not lost. The abort is only ever raised while the
cancelled job is the current one (under the lock), so it cannot hit the next job.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("minicpmv_edge.edge_runtime.server")

_WATCH_S = 0.02


@dataclass
class Job:
    """Events: ("piece", (choice, Piece)), ("choice", (choice, ChatResult)) after each of the `n`
    choices, then ("done", [ChatResult]) or ("error", exception)."""

    turns: list
    kwargs: dict  # MiniCPMV.chat keyword arguments
    loop: asyncio.AbstractEventLoop
    n: int = 1  # choices, generated one after another (a given seed: seed + choice)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""  # "disconnect" | "timeout" | "shutdown"

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
    def __init__(self, model, max_queue: int):
        self.model = model
        self.max_queue = max_queue
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._current: Job | None = None
        self._recent = collections.deque(maxlen=16)  # seconds per finished job, for Retry-After
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._watch = threading.Thread(target=self._watchdog, name="generation-watchdog", daemon=True)
        self._thread.start()
        self._watch.start()

    # --- event-loop side --------------------------------------------------------
    def reserve(self) -> None:
        """Take a queue slot before the request's images are decoded (so decodes are bounded too)."""
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._waiting += 1

    def release(self) -> None:
        """Give back a reserved slot (the request failed before it was submitted)."""
        with self._lock:
            self._waiting -= 1

    def submit(self, job: Job) -> None:
        """Queue a job on a slot taken with reserve()."""
        self._q.put(job)

    def cancel(self, job: Job, reason: str) -> None:
        if not job.cancelled.is_set():
            job.reason = reason
            job.cancelled.set()
        with self._lock:
            if self._current is job:
                self.model.cancel()

    def retry_after(self) -> int:
        avg = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1, math.ceil(avg * (self._waiting + 1)))

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._current is not None:
                self._current.cancelled.set()
                self.model.cancel()
        self._q.put(None)
        self._thread.join(timeout=10)

    # --- worker thread --------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._q.get()
            if job is None:
                break
            with self._lock:
                self._waiting -= 1
                if job.cancelled.is_set():
                    continue
                self._current = job
            t0 = time.perf_counter()
            try:
                self._generate(job)
            finally:
                with self._lock:
                    self._current = None
                self._recent.append(time.perf_counter() - t0)

    def _generate(self, job: Job) -> None:
        try:
            results = []
            for i in range(job.n):
                if job.cancelled.is_set():
                    break
                kwargs = dict(job.kwargs)
                if i and kwargs.get("seed", -1) != -1:
                    kwargs["seed"] = (kwargs["seed"] + i) % (2**32 - 1)
                for piece in self.model.chat(job.turns, stream=True, **kwargs):
                    job.emit("piece", (i, piece))
                results.append(self.model.last_result)
                job.emit("choice", (i, results[-1]))
            job.emit("done", results)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to its request
            if job.cancelled.is_set():
                job.emit("done", None)  # aborted mid-decode: nobody is waiting for details
            else:
                job.emit("error", exc)

    def _watchdog(self) -> None:
        while not self._stop.wait(_WATCH_S):
            with self._lock:
                if self._current is not None and self._current.cancelled.is_set():
                    self.model.cancel()
