"""Video frames laid out the way MiniCPMV4_6VideoProcessor (4.6, 4.7, MiniCPM-OCR 1.0) does it.

The images path (processor_images.py) follows the PIL image processor. The video processor is a
different class with three differences the model sees:

- sub-frames of one second are composited into one picture (`concat_frames_as_image`): a grid
  chosen by frame count (4: 2x2; 3 and 2: the arrangement whose canvas is closest to square,
  2 frames at equal distance by the frame's own orientation; otherwise one row), frames
  separated by 6-pixel black lines;
- frames are resized by torchvision on uint8 tensors, which runs torch's antialiased bicubic
  kernel (`interpolate(..., "bicubic", antialias=True)` on uint8: separable, horizontal pass
  then vertical, PIL's filter with a = -0.5 and support 2 x scale, weights normalised per
  output pixel, then rounded to int16 with the largest precision that keeps the biggest weight
  under 2^15, accumulated in int32 from 1 << (precision - 1), shifted and clamped per pass).
  PIL keeps 22 bits of weight precision instead, which moves 0.3-0.9% of the pixels by 1-2
  levels; `resize_uint8` below is our implementation of torch's rounding, written here because
  the runtime does not ship torch;
- rescale and normalise are fused: (x - 255*mean) / (255*std) in float32.

The crop geometry (grid, sizes, 56-pixel alignment) is the image processor's (processor_images.py
plan_sizes); tests/test_video_stacked.py checks pixels and placeholders against the processor.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .processor_images import Crop, ImageLayout, ImageSpec, plan_sizes

LINE_WIDTH = 6  # concat_frames_as_image's separator


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output pixel: first input index [n_out], int16-rounded weights [n_out, taps] (zero padded)
    and the weight precision in bits."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    first = np.empty(n_out, np.int64)
    w = np.zeros((n_out, taps), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # C++ casts truncate toward zero
        size = min(int(center + support + 0.5), n_in) - lo
        row = _cubic((np.arange(size) + lo - center + 0.5) * invscale)
        total = row.sum()
        w[i, :size] = row / total if total != 0.0 else row
        first[i] = lo
    w_max = w.max()
    bits = 0
    while bits < 22 and int(0.5 + w_max * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    scaled = w * (1 << bits)
    rounded = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return first, rounded, bits


def _pass(img: np.ndarray, n_out: int) -> np.ndarray:
    """One separable pass over the rows (axis 0) of an HxWxC uint8 image. Sums stay below 2^31:
    255 x (2^15 - 1) x 13 taps at most per output."""
    n_in = img.shape[0]
    first, k, bits = _weights(n_in, n_out)
    k = k.astype(np.int32)
    acc = np.full((n_out,) + img.shape[1:], 1 << (bits - 1) if bits else 0, np.int32)
    for t in range(k.shape[1]):
        idx = np.minimum(first + t, n_in - 1)  # padded taps carry weight 0
        acc += img[idx].astype(np.int32) * k[:, t, None, None]
    return np.clip(acc >> bits, 0, 255).astype(np.uint8)


def resize_uint8(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8 -> height x width x 3, as torch's uint8 antialiased bicubic interpolate."""
    out = np.ascontiguousarray(rgb, dtype=np.uint8)
    if out.shape[1] != width:  # horizontal first, on the transposed image (row gathers are contiguous)
        out = np.ascontiguousarray(_pass(np.ascontiguousarray(out.transpose(1, 0, 2)), width).transpose(1, 0, 2))
    if out.shape[0] != height:
        out = _pass(out, height)
    return out


def stack_grid(n: int, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of concat_frames_as_image for n frames of width x height."""

    def squareness(rows: int, cols: int) -> float:
        cw, ch = cols * width + (cols - 1) * LINE_WIDTH, rows * height + (rows - 1) * LINE_WIDTH
        return abs(cw / max(1, ch) - 1.0)

    if n == 4:
        return 2, 2
    if n == 3:
        return min([(1, 3), (3, 1)], key=lambda rc: squareness(*rc))
    if n == 2:
        a, b = squareness(1, 2), squareness(2, 1)
        if a == b:
            return (1, 2) if width / height >= 1.0 else (2, 1)
        return (1, 2) if a < b else (2, 1)
    return 1, n


def stack(frames: list[np.ndarray]) -> np.ndarray:
    """Sub-frames of one second as one picture (concat_frames_as_image): black 6-pixel lines between."""
    h, w = frames[0].shape[:2]
    rows, cols = stack_grid(len(frames), w, h)
    canvas = np.zeros((rows * h + (rows - 1) * LINE_WIDTH, cols * w + (cols - 1) * LINE_WIDTH, 3), np.uint8)
    for k, f in enumerate(frames):
        r, c = divmod(k, cols)
        canvas[r * (h + LINE_WIDTH):r * (h + LINE_WIDTH) + h, c * (w + LINE_WIDTH):c * (w + LINE_WIDTH) + w] = f
    return canvas


def normalise(rgb: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """The video processor's fused rescale + normalise, in float32."""
    mean = np.asarray(spec.mean, np.float32) * np.float32(255.0)
    std = np.asarray(spec.std, np.float32) * np.float32(255.0)
    return np.ascontiguousarray((rgb.astype(np.float32) - mean) / std, dtype=np.float32)


def resized(rgb: np.ndarray, spec: ImageSpec) -> tuple[list[np.ndarray], tuple[int, int], list[tuple[int, int]]]:
    """uint8 pictures of one visual unit (source, then slices row-major), its grid and sizes."""
    height, width = rgb.shape[:2]
    sizes, grid = plan_sizes(width, height, spec)
    pieces = [resize_uint8(rgb, *sizes[0])]
    if grid != (0, 0):
        rows, cols = grid
        cw, ch = sizes[1]
        refined = resize_uint8(rgb, cw * cols, ch * rows)
        pieces += [refined[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] for r in range(rows) for c in range(cols)]
    return pieces, grid, sizes


def layout(rgb: np.ndarray, spec: ImageSpec) -> ImageLayout:
    """Crops of one video frame (or composite), in the order the video processor emits them."""
    pieces, grid, sizes = resized(rgb, spec)
    crops = []
    for (w, h), piece in zip(sizes, pieces):
        tag = f"{w}x{h}/video/{spec.key()}".encode()
        digest = hashlib.sha256(np.ascontiguousarray(piece).tobytes() + tag).hexdigest()[:32]
        crops.append(Crop(w, h, normalise(piece, spec), digest))
    return ImageLayout(crops, grid, sizes)


__all__ = ["resize_uint8", "stack", "stack_grid", "normalise", "resized", "layout", "LINE_WIDTH"]
