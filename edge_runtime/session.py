"""One conversation's llama.cpp state: KV prefix reuse, image-embedding cache, counters.

The KV cache holds a sequence of units (a text token, or an image chunk of
n_pos positions). For each request the whole prompt is tokenised (mtmd splits
text and images), compared unit by unit with what the cache already holds, the
cache is cut back to the common prefix and only the rest is evaluated. So a
follow-up question about the same image evaluates only the new tokens, and an
image seen earlier in the process is decoded from cached embeddings instead of
being encoded again (keyed by a hash of its pixels and slice settings).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from minicpmv_edge import progress
from minicpmv_edge.errors import MismatchError

from .engine import CHUNK_IMAGE, CHUNK_TEXT, Bitmap, Context, Vision

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """What the session actually did; tests use these to prove reuse."""

    tokens_evaluated: int = 0  # text tokens sent through llama_decode (prompt + generated)
    prompt_tokens_reused: int = 0  # prompt positions kept from the KV cache
    images_encoded: int = 0  # image chunks run through the vision encoder
    image_cache_hits: int = 0  # image chunks decoded from cached embeddings
    image_encode_ms: list[float] = field(default_factory=list)
    # recurrent models (4.6): state snapshots taken (one per turn, where the next turn's prompt
    # diverges; a sequence copy in llama.cpp, see engine.Context) and restores of one
    state_snapshots: int = 0
    state_restores: int = 0

    def snapshot(self) -> "Counters":
        return replace(self, image_encode_ms=list(self.image_encode_ms))


class EmbeddingCache:
    """LRU of image-chunk embeddings, shared by all sessions of one loaded model (and by the slots
    of a parallel pool, from their own threads: hence the lock); with a `store`
    (embedding_store.DiskEmbeddingStore) also on disk, across restarts."""

    def __init__(self, max_bytes: int = 256 << 20, store=None):
        self.max_bytes = max_bytes
        self.store = store
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._d or (self.store is not None and self.get(key) is not None)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
                return v
        if self.store is not None:
            v = self.store.get(key)
            if v is not None:
                self._remember(key, v)
        return v

    def put(self, key: str, value: np.ndarray) -> None:
        self._remember(key, value)
        if self.store is not None:
            self.store.put(key, value)

    def _remember(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            if key in self._d or value.nbytes > self.max_bytes:
                return
            self._d[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._d.popitem(last=False)
                self._bytes -= old.nbytes


@dataclass
class PrefillStats:
    n_prompt: int
    n_evaluated: int
    ms: float
    image_encode_ms: list[float]


class Session:
    def __init__(self, ctx: Context, vision: Vision | None, cache: EmbeddingCache, encoder=None, planner=None):
        self.ctx = ctx
        self.vision = vision
        self.cache = cache
        # processor-exact images with explicit positions (visual_plan.py: 4.6, OCR, 4.7); replaces mtmd
        self.planner = planner
        # optional external encoder (edge_runtime/external_encoder.py): replaces mtmd_encode_chunk;
        # mtmd still slices and tokenizes, and decodes the embeddings it returns
        self.encoder = encoder
        self._sources: dict[int, tuple[int, int]] = {}  # image chunk index -> (bitmap, chunk of that bitmap)
        self._made: dict[str, object] = {}  # bitmap id -> its embed() (engine.Bitmap.embed), this prompt
        self._bitmaps: list[Bitmap] = []
        self._pixels: dict[int, list] = {}
        self.units: list[tuple] = []  # what the KV cache holds, in order
        self._committed = 0  # ctx.n_past right after the last unit was recorded (see _resync)
        self.counters = Counters()
        # models whose memory cannot be cut back (recurrent layers) keep one snapshot (the context's
        # spare sequence), taken just before the prompt's generation-only tail (prompt.py RenderedPrompt.tail: the
        # thinking prefix the template drops from past answers): where the next turn's prompt
        # diverges. These are the units it holds.
        self._snapshot_units: list[tuple] | None = None

    def reset(self) -> None:
        self.ctx.clear()
        self.units = []
        self._committed = 0
        self._snapshot_units = None

    def _take_snapshot(self) -> None:
        self.ctx.snapshot()
        self._snapshot_units = list(self.units)
        self.counters.state_snapshots += 1

    def _restore_snapshot(self) -> bool:
        if self._snapshot_units is None or not self.ctx.restore():
            return False
        self.units = list(self._snapshot_units)
        self._commit()
        self.counters.state_restores += 1
        return True

    # --- keeping the record and llama.cpp's memory equal after a failure ------------------
    # A decode can stop anywhere (cancel() fires llama.cpp's abort callback, a llama_decode
    # error, a bad image): llama.cpp then drops only the failed ubatch, so earlier ubatches of
    # the same call stay in its memory while `units` never recorded them. Every evaluation
    # therefore ends in `_resync` on failure, which cuts the memory back to what `units` says.
    def _commit(self) -> None:
        self._committed = self.ctx.n_past

    def _resync(self) -> None:
        """Make llama.cpp's memory hold exactly `units` again (or nothing, if it cannot)."""
        ctx = self.ctx
        if ctx.model.can_truncate:
            if ctx.cut(self._committed) and ctx.pos_max() < self._committed:
                return
        else:
            # a recurrent state is overwritten in place while a ubatch runs: after an abort it cannot
            # be trusted at any position; the snapshot (a separate sequence) taken before the
            # generation prefix can
            snap = self._snapshot_units
            if snap is not None and self.units[:len(snap)] == snap and self._restore_snapshot():
                return
        self.reset()

    def consistency_problem(self) -> str | None:
        """None when llama.cpp's memory ends where `units` says; otherwise the difference, in words."""
        top = self.ctx.pos_max()
        if not self.units:
            return None if top < 0 and self.ctx.n_past == 0 else \
                f"the cache holds positions up to {top} but the session records none"
        if self.ctx.n_past != self._committed:
            return f"the context is at position {self.ctx.n_past} but the session recorded {self._committed}"
        # M-RoPE images advance the position by less than their rows: only an upper bound holds then
        if top >= self._committed or (self.ctx.model.n_pos_per_embd == 1 and top != self._committed - 1):
            return f"the cache ends at position {top} but the session recorded {self._committed}"
        return None

    def prefill(self, text: str, bitmaps: list[Bitmap], tail: str = "", ahead: bool = False) -> PrefillStats:
        """Make the KV cache hold exactly `text` (with images at the markers); logits ready.

        `tail`: the generation-only end of `text` (e.g. a thinking prefix) that the next
        turn's history will not repeat; recurrent models snapshot their state before it
        (at the end of the prompt when the tail is empty).
        `ahead`: `text` is the start of a prompt whose rest is not known yet (prefill_ahead.py):
        evaluate it only up to its last image or special token, no logits needed."""
        t0 = time.perf_counter()
        problem = self.consistency_problem()
        if problem:  # never expected; a clean cache beats answering from a corrupt one
            log.warning("resetting the KV cache: %s", problem)
            self.reset()
        plan, chunks = self._plan(text, bitmaps)
        try:
            if ahead:
                plan = plan[:self._stable_len(plan)]
            keep = 0
            while keep < len(plan) and keep < len(self.units) and plan[keep][0] == self.units[keep]:
                keep += 1
            if keep == len(plan) and ahead:  # all of it is in the cache already
                self.counters.prompt_tokens_reused += sum(_n_tok(u) for u, _ in plan)
                return PrefillStats(sum(_n_tok(u) for u, _ in plan), 0, (time.perf_counter() - t0) * 1e3, [])
            if keep == len(plan):  # identical prompt: re-evaluate the last unit for fresh logits
                keep -= 1
            keep = self._rewind(plan, keep)
            self.counters.prompt_tokens_reused += sum(_n_tok(u) for u, _ in plan[:keep])
            if self._needs_pixels(plan[keep:], chunks):  # an image chunk mtmd must encode: real pixels
                real = self.vision.tokenize(text, bitmaps)
                chunks.close()
                chunks = real
            cut = len(plan) - self._tail_units(plan, tail)
            if not self.ctx.model.can_truncate and keep <= cut:  # (at the end when the tail is empty)
                evaluated, encode_ms = self._evaluate(plan[keep:cut], chunks)
                if self._snapshot_units != self.units:  # a regenerate restores to where it already is
                    self._take_snapshot()
                more, more_ms = self._evaluate(plan[cut:], chunks)
                evaluated, encode_ms = evaluated + more, encode_ms + more_ms
            else:
                evaluated, encode_ms = self._evaluate(plan[keep:], chunks)
        except BaseException:
            self._resync()
            raise
        finally:
            if chunks is not None:
                chunks.close()
        # tokens, not positions: under M-RoPE an image advances the position less than its token count
        return PrefillStats(sum(_n_tok(u) for u, _ in plan), evaluated, (time.perf_counter() - t0) * 1e3, encode_ms)

    def count_tokens(self, text: str, bitmaps: list[Bitmap]) -> int:
        """Prompt tokens of `text` with its images, laid out as prefill would, nothing evaluated."""
        plan, chunks = self._plan(text, bitmaps)
        if chunks is not None:
            chunks.close()
        return sum(_n_tok(u) for u, _ in plan)

    def _rewind(self, plan: list[tuple], keep: int) -> int:
        """Cut the cache back to `keep` units; returns how many units it really kept."""
        if keep >= len(self.units):
            return keep
        pos = sum(_n_pos(u) for u in self.units[:keep])
        if self.ctx.model.can_truncate and self.ctx.cut(pos):
            self.units = self.units[:keep]
            self._commit()
            return keep
        snap = self._snapshot_units
        if snap is not None and len(snap) <= keep and [u for u, _ in plan[:len(snap)]] == snap \
                and self._restore_snapshot():
            return len(snap)
        self.reset()
        return 0

    def _stable_len(self, plan: list[tuple]) -> int:
        """Units up to the last image or special token: text after it may tokenize differently once
        the rest of the prompt follows (BPE merges across the join), an image or a special token not."""
        model = self.ctx.model
        for i in range(len(plan) - 1, -1, -1):
            unit = plan[i][0]
            if unit[0] != "tok" or model.is_special(unit[1]):
                return i + 1
        return 0

    def _tail_units(self, plan: list[tuple], tail: str) -> int:
        if not tail:
            return 0
        toks = self.ctx.model.tokenize(tail)
        n = len(toks)
        if n and n < len(plan) and [u for u, _ in plan[-n:]] == [("tok", t) for t in toks]:
            return n
        return 0

    def _plan(self, text: str, bitmaps: list[Bitmap]):
        """Prompt -> [(unit, chunk index)]; unit = ("tok", id) or ("img", key, n_pos).

        An image's key is its pixel hash plus which of its chunks (overview, slice k)
        this is, so the same image matches across turns and across conversations."""
        if self.planner is not None:
            return self.planner.plan(text, bitmaps, self.ctx.n_ctx), None
        if self.vision is None:
            return [(("tok", t), None) for t in self.ctx.model.tokenize(text)], None
        # sizes only: units already in the KV cache or the embedding cache need no pixels (_needs_pixels)
        chunks = self.vision.tokenize(text, bitmaps, placeholders=True)
        self._made = {bm.id: bm.embed for bm in bitmaps if bm.embed is not None and bm.id}
        plan: list[tuple] = []
        ordinal: dict[str, int] = {}
        for i in range(len(chunks)):
            kind = chunks.kind(i)
            if kind == CHUNK_TEXT:
                plan.extend((("tok", t), None) for t in chunks.text_tokens(i))
            elif kind == CHUNK_IMAGE:
                digest = chunks.image_id(i) or f"anon-{id(chunks)}-{i}"
                k = ordinal.get(digest, 0)
                ordinal[digest] = k + 1
                key = f"{digest}/{k}/{chunks.n_tokens(i)}"
                plan.append((("img", key, self.vision.n_pos(chunks[i]), chunks.n_tokens(i)), i))
        if self.encoder is not None:
            self._map_sources(chunks, bitmaps)
        return plan, chunks

    def _needs_pixels(self, todo: list[tuple], chunks) -> bool:
        """True when mtmd must encode one of `todo`'s image chunks (not in the embedding cache)."""
        if chunks is None or self.encoder is not None:  # the external encoder slices the bitmaps itself
            return False
        # (embeddings made elsewhere, engine.Bitmap.embed, need none either)
        return any(u[0] == "img" and (u[1].startswith("anon-") or u[1] not in self.cache)
                   and u[1].rsplit("/", 2)[0] not in self._made for u, _ in todo)

    def _map_sources(self, chunks, bitmaps: list[Bitmap]) -> None:
        """Each bitmap becomes n_chunks(rgb) consecutive image chunks (overview, then slices)."""
        images = [i for i in range(len(chunks)) if chunks.kind(i) == CHUNK_IMAGE]
        owners = [(b, k) for b, bm in enumerate(bitmaps) for k in range(self.encoder.n_chunks(bm.rgb))]
        if len(owners) != len(images):
            raise MismatchError(f"the external encoder slices these images into {len(owners)} chunks, "
                                f"mtmd into {len(images)}")
        self._sources = dict(zip(images, owners))
        self._bitmaps, self._pixels = list(bitmaps), {}

    def _encode(self, chunks, idx: int) -> np.ndarray:
        made = self._made.get(chunks.image_id(idx))
        if made is not None:
            embd = np.asarray(made(), dtype=np.float32)
            want = (chunks.n_tokens(idx), self.ctx.model.n_embd)
            if embd.shape != want:
                raise MismatchError(f"video embeddings came out {list(embd.shape)}; mtmd's chunk needs {list(want)}")
            return embd
        if self.encoder is None:
            return self.vision.encode_chunk(chunks[idx])
        b, k = self._sources[idx]
        if b not in self._pixels:
            self._pixels[b] = self.encoder.slices(self._bitmaps[b].rgb)
        embd = np.asarray(self.encoder.encode(self._pixels[b][k]), dtype=np.float32)
        want = (chunks.n_tokens(idx), self.ctx.model.n_embd)
        if embd.shape != want:
            raise MismatchError(f"external encoder returned {list(embd.shape)} for an image chunk "
                                f"mtmd expects as {list(want)}")
        return embd

    def _evaluate(self, todo: list[tuple], chunks) -> tuple[int, list[float]]:
        # a bar for images of many slices (drawn only when the CLI asked for bars: minicpmv_edge.progress)
        n_visual = sum(1 for u, _ in todo if u[0] in ("img", "emb"))
        many = n_visual > 4
        with progress.bar(n_visual if many else 0, "encoding image slices", unit="slice") as bar:
            if not many:
                bar = progress.OFF
            return self._evaluate_units(todo, chunks, bar)

    def _evaluate_units(self, todo: list[tuple], chunks, bar) -> tuple[int, list[float]]:
        evaluated = 0
        encode_ms: list[float] = []
        i = 0
        while i < len(todo):
            unit, idx = todo[i]
            if unit[0] == "tok":
                j = i + 1
                # planner tokens carry their position; one decode per run of consecutive positions
                while j < len(todo) and todo[j][0][0] == "tok" and (idx is None or todo[j][1] == idx + j - i):
                    j += 1
                if idx is not None:
                    self.ctx.n_past = idx
                toks = [u[1] for u, _ in todo[i:j]]
                self.ctx.decode(toks, logits_last=(j == len(todo)))
                self.units.extend(u for u, _ in todo[i:j])
                self._commit()
                self.counters.tokens_evaluated += len(toks)
                evaluated += len(toks)
                i = j
                continue
            if unit[0] == "emb":
                ms = self.planner.evaluate(self.ctx, idx, logits_last=(i == len(todo) - 1))
                encode_ms += ms
                self.units.append(unit)
                self._commit()
                bar.update(1)
                i += 1
                continue
            chunk = chunks[idx]
            cacheable = not unit[1].startswith("anon-")
            embd = self.cache.get(unit[1]) if cacheable else None
            if embd is None:
                t0 = time.perf_counter()
                embd = self._encode(chunks, idx)
                ms = (time.perf_counter() - t0) * 1e3
                encode_ms.append(ms)
                self.counters.images_encoded += 1
                self.counters.image_encode_ms.append(ms)
                if cacheable:
                    self.cache.put(unit[1], embd)
            else:
                self.counters.image_cache_hits += 1
            self.vision.decode_image_chunk(self.ctx, chunk, embd)
            self.units.append(unit)
            self._commit()
            bar.update(1)
            i += 1
        return evaluated, encode_ms

    def encode_ahead(self, bitmaps: list[Bitmap]) -> list[float]:
        """Encode the images' chunks into the embedding cache now, so that the prefill that later
        meets them finds them there (chunk keys as in _plan); returns ms per chunk encoded."""
        if self.planner is not None:
            return self.planner.encode_ahead(bitmaps)
        text = self.vision.marker * len(bitmaps)
        plan, chunks = self._plan(text, bitmaps)
        out: list[float] = []
        try:
            if self._needs_pixels(plan, chunks):  # _plan lays out sizes only; encoding needs the pixels
                chunks.close()
                chunks = self.vision.tokenize(text, bitmaps)
            for unit, idx in plan:
                if unit[0] != "img" or unit[1].startswith("anon-") or self.cache.get(unit[1]) is not None:
                    continue
                t0 = time.perf_counter()
                embd = self._encode(chunks, idx)
                out.append((time.perf_counter() - t0) * 1e3)
                self.counters.images_encoded += 1
                self.counters.image_encode_ms.append(out[-1])
                self.cache.put(unit[1], embd)
        finally:
            chunks.close()
        return out

    def append_generated(self, token: int) -> None:
        try:
            self.ctx.decode([token])
        except BaseException:
            self._resync()
            raise
        self.units.append(("tok", token))
        self._commit()
        self.counters.tokens_evaluated += 1


def _n_pos(unit: tuple) -> int:
    return unit[2] if unit[0] == "img" else 1


def _n_tok(unit: tuple) -> int:
    return unit[3] if unit[0] == "img" else unit[2] if unit[0] == "emb" else 1
