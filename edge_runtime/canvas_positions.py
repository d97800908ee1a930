"""MiniCPM-V 4.7's canvas M-RoPE: (t, h, w) decoder positions of one prompt.

Our implementation of the rule that transformers' `MiniCPMV4_7Model.get_rope_index` applies
(models/minicpmv4_7, transformers 5.24); tests/test_canvas_positions.py compares the two on many
layouts. Terms:

- a crop is a maximal run of visual tokens; it is a *slice* when `<slice>` precedes it inside an
  open frame, otherwise it opens a new *frame* (its thumbnail) and adopts the slices that follow;
- a frame ends after its last crop plus every marker token that follows (`</image>`, `</slice>`,
  `<image>`, `<slice>`, newline);
- frames separated only by markers form one *group* (how a video's frames arrive).

Text outside groups gets plain 1-D positions (t = h = w). In a frame every token has t = the
canvas origin. The canvas is the slice grid (rows x slice height, cols x slice width, in LLM
tokens), or the thumbnail's own grid without slices. The thumbnail is spread over the whole canvas
(rounded linspace), slices sit at their offsets, `<image>` sits on the halo just before the canvas
(origin - 1), `</image>` on its far corner, `<slice>`/`</slice>` on their slice's corners, a row's
newline just past the right edge of the row's last line. The next frame or text starts at
origin + max(canvas height, canvas width) + 1; gap text between frames of a group moves the
cursor one further. Generation continues after the largest position.

Video frames use the same machinery with their own crop sizes (modality 2), so the full video
recipe (issue 16) only has to produce the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import numpy as np


@dataclass(frozen=True)
class Markers:
    image_start: int
    image_end: int
    slice_start: int
    slice_end: int
    newline: int

    def all(self) -> frozenset[int]:
        return frozenset((self.image_start, self.image_end, self.slice_start, self.slice_end, self.newline))


def spread(extent: int, n: int) -> np.ndarray:
    """round(linspace(0, extent - 1, n)) as torch computes it in float32 (half to even)."""
    if n == 1:
        return np.zeros(1, np.int64)
    start, end = np.float32(0), np.float32(extent - 1)
    step = np.float32((end - start) / np.float32(n - 1))
    i = np.arange(n)
    half = n // 2
    # torch's CPU linspace fills the first half forward from start and the rest back from end
    vals = np.where(i < half, start + i.astype(np.float32) * step, end - (n - 1 - i).astype(np.float32) * step)
    return np.round(vals.astype(np.float32)).astype(np.int64)


def _frames(ids: list[int], mm: list[int], markers: Markers):
    """[(group_start, group_end, [(modality, thumb_start, thumb_end, frame_end, [(s, e), ...])])]."""
    marker_set = markers.all()
    groups: list[tuple[int, list]] = []
    open_slices = None
    prev_end = 0
    pos = 0
    for modality, run in groupby(mm):
        n = len(list(run))
        start, end = pos, pos + n
        pos = end
        if modality == 0:
            continue
        if open_slices is not None and start > 0 and ids[start - 1] == markers.slice_start:
            open_slices.append((start, end))
        else:
            open_slices = []
            frame = [modality, start, end, open_slices]
            joined = bool(groups) and all(t in marker_set for t in ids[prev_end:start - 1])
            if joined:
                groups[-1][1].append(frame)
            else:
                groups.append((start - 1, [frame]))
        prev_end = end
    out = []
    for gstart, frames in groups:
        done = []
        for modality, ts, te, slices in frames:
            fe = slices[-1][1] if slices else te
            while fe < len(ids) and ids[fe] in marker_set:
                fe += 1
            done.append((modality, ts, te, fe, slices))
        out.append((gstart, done[-1][3], done))
    return out


def canvas_positions(ids: list[int], mm: list[int], crop_grids: dict[int, list[tuple[int, int]]], merge: int,
                     markers: Markers) -> np.ndarray:
    """Positions [3, len(ids)] (t, h, w).

    ids: token ids with visual tokens at their places (any id); mm: 0 text, 1 image, 2 video per
    token; crop_grids: per modality, the (rows, cols) patch grid of every crop in order; merge:
    patches per LLM token per side (4 for "16x", 2 for "4x")."""
    n = len(ids)
    pos = np.tile(np.arange(n, dtype=np.int64), (3, 1))
    grids = {m: iter(g) for m, g in crop_grids.items()}
    cur_pos = 0
    cur_idx = 0
    for gstart, gend, frames in _frames(ids, mm, markers):
        if gstart > cur_idx:
            pos[:, cur_idx:gstart] = np.arange(gstart - cur_idx) + cur_pos
            cur_pos += gstart - cur_idx
        cursor = gstart
        for modality, ts, te, fe, slices in frames:
            thumb = next(grids[modality])
            fs = ts - 1
            if fs > cursor:
                pos[:, cursor:fs] = np.arange(fs - cursor) + cur_pos
                cur_pos += fs - cursor + 1
            fe = min(fe, gend)
            origin = cur_pos
            ch, cw = thumb[0] // merge, thumb[1] // merge
            rows = cols = sh = sw = 0
            if slices:
                cols = len(slices)
                for k in range(len(slices) - 1):
                    if slices[k + 1][0] - slices[k][1] > 2:  # a newline between </slice> and <slice>
                        cols = k + 1
                        break
                rows = len(slices) // cols
                if rows * cols != len(slices):
                    rows, cols = 1, len(slices)
                first = next(grids[modality])
                sh, sw = first[0] // merge, first[1] // merge
                ch, cw = rows * sh, cols * sw
            pos[:, fs:fe] = origin
            pos[1:, fs] = max(origin - 1, 0)
            if te < fe:
                pos[1, te], pos[2, te] = origin + ch, origin + cw
            gh, gw = thumb[0] // merge, thumb[1] // merge
            hh, ww = np.meshgrid(spread(ch, gh), spread(cw, gw), indexing="ij")
            pos[1, ts:te] = hh.reshape(-1) + origin
            pos[2, ts:te] = ww.reshape(-1) + origin
            for k, (ss, se) in enumerate(slices):
                g = first if k == 0 else next(grids[modality])
                kh, kw = g[0] // merge, g[1] // merge
                h_off, w_off = (k // cols) * sh, (k % cols) * sw
                if ss - 1 >= fs:
                    pos[1, ss - 1], pos[2, ss - 1] = origin + h_off, origin + w_off
                if se < fe:
                    pos[1, se], pos[2, se] = origin + h_off + kh - 1, origin + w_off + kw - 1
                hh, ww = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
                pos[1, ss:se] = hh.reshape(-1) + h_off + origin
                pos[2, ss:se] = ww.reshape(-1) + w_off + origin
            for k in range(len(slices) - 1):
                a, b = slices[k][1], slices[k + 1][0]
                if b - a <= 2:
                    continue
                pos[1, a + 1:b - 1] = origin + (k // cols + 1) * sh - 1
                pos[2, a + 1:b - 1] = origin + cols * sw
            cur_pos = origin + max(ch, cw) + 1
            cursor = fe
        if cursor < gend:
            pos[:, cursor:gend] = np.arange(gend - cursor) + cur_pos
            cur_pos += gend - cursor
        cur_idx = gend
    if cur_idx < n:
        pos[:, cur_idx:] = np.arange(n - cur_idx) + cur_pos
    return pos


def sequential_positions(n: int, start: int = 0) -> np.ndarray:
    """4.6 / OCR: one position per token, t = h = w."""
    return np.tile(np.arange(start, start + n, dtype=np.int64), (3, 1))


__all__ = ["Markers", "canvas_positions", "sequential_positions", "spread"]
