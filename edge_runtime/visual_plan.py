"""Prompts with images for the merger families (4.6, MiniCPM-OCR 1.0, 4.7), laid out as their processors do.

For these families the runtime does not go through mtmd_tokenize: images are cut by
processor_images.py, encoded by clip_encoder.py, and the placeholder structure is the one
MiniCPMV4_6Processor.replace_image_token / replace_video_token writes:

    <image> N tokens </image>  then, when sliced, rows of  <slice> N </slice>...  joined by "\\n"

(the `<image_id>i</image_id>` prefix is already in the prompt text; video frames follow one another
without separators). Positions are one per token for 4.6 / OCR (what their transformers forward
uses: no 3-D positions) and canvas M-RoPE for 4.7 (canvas_positions.py). A token whose three
position components are equal and past every earlier position is fed as a token; everything else
(visual rows, and for 4.7 the markers inside a frame) is fed as embedding rows, markers as rows of
the model's token_embd read from the GGUF.

The plan is a list of (unit, payload) the session evaluates and compares across turns: ("tok", id)
with its position, or ("emb", key, n_tokens) with a Span. Equal units mean equal content at equal
positions, so KV reuse across turns stays exact.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np

from minicpmv_edge.errors import ContextOverflowError, GGUFError, InputError

from .canvas_positions import Markers, canvas_positions
from .processor_images import ImageLayout, ImageSpec, layout
from .video_frames import layout as video_layout

IMAGE, VIDEO = 1, 2


@dataclass
class Span:
    """Consecutive tokens fed as embedding rows: visual rows and marker rows, in order."""

    rows: list[tuple]  # ("crop", crop, start, stop) or ("tok", id)
    pos: np.ndarray  # [3, n]
    index_causal: bool

    @property
    def n_tokens(self) -> int:
        return int(self.pos.shape[1])


class TokenRows:
    """Input-embedding rows of chosen tokens, dequantized from the text GGUF's token_embd."""

    def __init__(self, text_path: str):
        self.path = text_path
        self._rows: dict[int, np.ndarray] = {}
        self._tensor = None

    def get(self, token: int) -> np.ndarray:
        if token not in self._rows:
            if self._tensor is None:
                from gguf import GGUFReader

                reader = GGUFReader(self.path)
                self._tensor = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
                if self._tensor is None:
                    raise GGUFError("no token_embd.weight tensor", self.path)
            from gguf.quants import dequantize

            t = self._tensor
            self._rows[token] = np.asarray(dequantize(np.asarray(t.data[token:token + 1]), t.tensor_type),
                                           np.float32).reshape(-1)
        return self._rows[token]


@dataclass(frozen=True)
class Vocab:
    image_start: int
    image_end: int
    slice_start: int
    slice_end: int
    newline: int
    image_pad: int  # any id for visual slots; compared never, kept for readable dumps


class VisualPlanner:
    def __init__(self, model, encoder, cache, image_spec: ImageSpec, video_spec: ImageSpec, vocab: Vocab,
                 canvas: bool, counters):
        self.model, self.encoder, self.cache = model, encoder, cache
        self.image_spec, self.video_spec, self.vocab, self.canvas = image_spec, video_spec, vocab, canvas
        self.markers = Markers(vocab.image_start, vocab.image_end, vocab.slice_start, vocab.slice_end, vocab.newline)
        self.rows = TokenRows(model.path)
        self.counters = counters
        self.external = None  # an external encoder (export-vision ONNX) used instead of llama.cpp's
        self.last_ids: list[int] = []  # the last planned prompt (tests compare it with the processor's)
        self.last_positions: np.ndarray | None = None

    # --- layout -------------------------------------------------------------------------------
    def expand(self, text: str, bitmaps) -> tuple[list[int], list[int], list, dict]:
        """ids, modality per token, (crop, row) per visual token, crop grids per modality."""
        parts = text.split(self.encoder.marker)
        if len(parts) - 1 != len(bitmaps):
            raise InputError(f"prompt has {len(parts) - 1} media markers for {len(bitmaps)} images")
        ids: list[int] = []
        mm: list[int] = []
        slots: list = []
        grids: dict[int, list] = {IMAGE: [], VIDEO: []}
        v = self.vocab
        for k, piece in enumerate(parts):
            toks = self.model.tokenize(piece) if piece else []
            ids += toks
            mm += [0] * len(toks)
            slots += [None] * len(toks)
            if k == len(bitmaps):
                break
            bm = bitmaps[k]
            video = bool(bm.id and bm.id.endswith("/v"))
            spec = self.video_spec if video else self.image_spec
            if bm.max_slices and not video:  # a per-request budget (image_budget.py)
                spec = replace(spec, max_slice_nums=int(bm.max_slices))
            # video frames follow the video processor (video_frames.py: torch's uint8 resize)
            lay = (video_layout if video else layout)(bm.rgb, spec)
            kind = VIDEO if video else IMAGE

            def crop(c):
                n = c.n_tokens(spec.patch_size, spec.merge)
                grids[kind].append(c.grid(spec.patch_size))
                ids.extend([v.image_pad] * n)
                mm.extend([kind] * n)
                slots.extend((c, r) for r in range(n))

            def mark(t):
                ids.append(t)
                mm.append(0)
                slots.append(None)

            mark(v.image_start)
            crop(lay.crops[0])
            mark(v.image_end)
            rows, cols = lay.grid
            for r in range(rows):
                if r:
                    mark(v.newline)
                for c in range(cols):
                    mark(v.slice_start)
                    crop(lay.crops[1 + r * cols + c])
                    mark(v.slice_end)
        return ids, mm, slots, grids

    def cost(self, width: int, height: int, max_slices: int | None = None):
        """What a width x height image costs (image_budget.ImageCost), from the processor's geometry."""
        from .image_budget import ImageCost
        from .processor_images import plan_sizes

        spec = replace(self.image_spec, max_slice_nums=int(max_slices)) if max_slices else self.image_spec
        sizes, (rows, cols) = plan_sizes(width, height, spec)
        rows_embd = sum((h // spec.patch_size) * (w // spec.patch_size) // spec.merge ** 2 for w, h in sizes)
        n_slices = len(sizes) - 1
        # <image> </image>, <slice> </slice> per slice, "\n" between rows of slices
        markers = 2 + 2 * n_slices + max(0, rows - 1)
        return ImageCost(width, height, len(sizes), (cols, rows), rows_embd + markers, rows_embd)

    def plan(self, text: str, bitmaps, n_ctx: int) -> list[tuple]:
        ids, mm, slots, grids = self.expand(text, bitmaps)
        if len(ids) > n_ctx:
            raise ContextOverflowError(f"prompt needs {len(ids)} tokens but the context holds {n_ctx}")
        if self.canvas:
            merge = self.image_spec.merge
            pos = canvas_positions(ids, mm, grids, merge, self.markers)
        else:
            pos = np.tile(np.arange(len(ids), dtype=np.int64), (3, 1))
        self.last_ids, self.last_positions = ids, pos
        plan: list[tuple] = []
        high = -1
        i = 0
        while i < len(ids):
            t, h, w = (int(x) for x in pos[:, i])
            if slots[i] is None and t == h == w and t > high:
                plan.append((("tok", ids[i]), t))
                high = t
                i += 1
                continue
            j = i
            rows: list[tuple] = []
            while j < len(ids):
                tj, hj, wj = (int(x) for x in pos[:, j])
                if j > i and slots[j] is None and tj == hj == wj and tj > max(high, int(pos[0, i:j].max())):
                    break
                if slots[j] is None:
                    rows.append(("tok", ids[j]))
                    j += 1
                else:
                    c, r0 = slots[j]
                    r1 = r0
                    while j < len(ids) and slots[j] is not None and slots[j][0] is c and slots[j][1] == r1:
                        j += 1
                        r1 += 1
                    rows.append(("crop", c, r0, r1))
                if not self.canvas and rows[-1][0] == "crop":
                    break  # 4.6 / OCR: one crop per span; its markers are plain tokens
            span = Span(rows, pos[:, i:j].copy(), index_causal=self.canvas)
            key = hashlib.sha256(repr([(r[0], r[1].digest, r[2], r[3]) if r[0] == "crop" else r for r in rows]).encode()
                                 + span.pos.tobytes()).hexdigest()[:32]
            plan.append((("emb", key, span.n_tokens), span))
            high = max(high, int(span.pos[0].max()))
            i = j
        return plan

    # --- evaluation ---------------------------------------------------------------------------
    def crop_embedding(self, c) -> tuple[np.ndarray, float | None]:
        """A crop's embedding rows from the cache, or encoded now and cached; the ms when encoded."""
        embd = self.cache.get(c.digest)
        if embd is not None:
            self.counters.image_cache_hits += 1
            return embd, None
        t0 = time.perf_counter()
        if self.external is not None:  # [1, 3, H, W] in, as export-vision's graphs take
            embd = np.asarray(self.external.encode(np.ascontiguousarray(c.pixels.transpose(2, 0, 1)[None])),
                              np.float32)
        else:
            embd = self.encoder.encode(c.pixels)
        ms = (time.perf_counter() - t0) * 1e3
        self.counters.images_encoded += 1
        self.counters.image_encode_ms.append(ms)
        self.cache.put(c.digest, embd)
        return embd, ms

    def encode_ahead(self, bitmaps) -> list[float]:
        """Encode the crops of `bitmaps` into the cache now (interactive /image); ms per crop encoded."""
        _, _, slots, _ = self.expand(self.encoder.marker * len(bitmaps), bitmaps)
        done: set[str] = set()
        out = []
        for slot in slots:
            if slot is not None and slot[0].digest not in done:
                done.add(slot[0].digest)
                _, ms = self.crop_embedding(slot[0])
                if ms is not None:
                    out.append(ms)
        return out

    def evaluate(self, ctx, span: Span, logits_last: bool) -> list[float]:
        """Encode (or fetch) the span's crops, build its rows, decode them; returns encode ms."""
        encode_ms: list[float] = []
        parts = []
        for row in span.rows:
            if row[0] == "tok":
                parts.append(self.rows.get(row[1])[None])
                continue
            _, c, r0, r1 = row
            embd, ms = self.crop_embedding(c)
            if ms is not None:
                encode_ms.append(ms)
            parts.append(embd[r0:r1])
        ctx.decode_embeddings(np.concatenate(parts, axis=0), span.pos, index_causal=span.index_causal,
                              logits_last=logits_last)
        return encode_ms


TORCH_RESAMPLE_FAMILIES = {"minicpm-ocr-1.0": "torch"}


def specs_from_gguf(kv: dict, mm_kv: dict, max_slices: int | None) -> tuple[ImageSpec, ImageSpec]:
    """Image and video processor settings from the text GGUF's minicpmv_edge.* keys and the mmproj."""
    from minicpmv_edge import schema

    mode = str(mm_kv.get(schema.EDGE_DOWNSAMPLE_MODE) or
               {4: "16x", 2: "4x"}.get(int(mm_kv.get(schema.CLIP_SCALE_FACTOR_U32, 4)), "16x"))
    mean = tuple(float(x) for x in mm_kv.get("clip.vision.image_mean", [0.5] * 3))[:3]
    std = tuple(float(x) for x in mm_kv.get("clip.vision.image_std", [0.5] * 3))[:3]
    cap = int(kv.get(schema.EDGE_SLICE_MAX, 9))
    upsize = str(kv.get(schema.EDGE_SMALL_IMAGE_UPSIZE, "always"))
    if upsize not in ("always", "never"):  # the converter refuses it; a GGUF edited or written elsewhere may not
        from minicpmv_edge.errors import UnsupportedModelError

        raise UnsupportedModelError(f"{schema.EDGE_SMALL_IMAGE_UPSIZE} = {upsize!r}: the runtime reproduces the "
                                    "processor's 'always' and 'never' only ('adaptive' needs its OpenCV glyph "
                                    "classifier)")
    base = dict(scale_resolution=int(kv.get(schema.EDGE_SLICE_SIZE, mm_kv.get(schema.CLIP_IMAGE_SIZE, 448))),
                patch_size=int(kv.get(schema.EDGE_PATCH_SIZE, mm_kv.get("clip.vision.patch_size", 14))),
                downsample_mode=mode, slice_mode=bool(kv.get(schema.EDGE_SLICE_MODE, True)), mean=mean, std=std,
                small_image_upsize=upsize)
    # the image processor class each family's checkpoint ships: OCR 1.0 only a torchvision one
    resample = TORCH_RESAMPLE_FAMILIES.get(str(kv.get(schema.EDGE_FAMILY, "")), "pil")
    # a budget asked for may exceed the GGUF's default (the processors take any; the cards suggest 36 for documents)
    image = ImageSpec(max_slice_nums=max_slices or cap, resample=resample, **base)
    video = ImageSpec(max_slice_nums=int(kv.get(schema.EDGE_VIDEO_MAX_SLICE, 1)), resample="torch", **base)
    return image, video


__all__ = ["VisualPlanner", "Span", "Vocab", "TokenRows", "specs_from_gguf", "ImageLayout"]
