"""A per-request image budget (slices and pixels) and what an image costs before it is encoded.

The model cards recommend `max_slice_nums` 36 for documents and 1 for video frames; an app
on a slow phone wants fewer slices than the model's default. A budget has two knobs:

- `max_slice_nums`: LLaVA-UHD's cap on slices. The merger families (4.6, OCR, 4.7) slice as
  their processors do, with this cap (processor_images.py). mtmd, which slices the resampler
  families (2.6, 4.0, 4.5), has no run-time setting (mtmd-image.cpp:571 hard-codes 9), so the
  image is shrunk until LLaVA-UHD's slice count, ceil(area / 448^2), fits the cap; above 9 it
  cannot go and the request is refused.
- `max_pixels`: the image is downscaled (aspect kept) to at most this many pixels before slicing,
  as Qwen-VL processors do and the C bridge's `mcv_image_params.max_pixels` does. Not to be
  confused with `LoadOptions.image_max_pixels`, the safety limit over which images are refused.

`ImageCost` reports, without encoding: the size the encoder will see, the number of encoder runs
(overview + slices), the slice grid and the context positions the image takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minicpmv_edge.errors import InputError

MTMD_MAX_SLICES = 9  # tools/mtmd/mtmd-image.cpp:571 at llama.cpp 0c1e570
SLICE_SIDE = 448


@dataclass(frozen=True)
class ImageBudget:
    max_slice_nums: int | None = None  # None: the model's default (LoadOptions.max_slices, else the GGUF's)
    max_pixels: int | None = None  # None: no downscale

    def validated(self, cap: int | None) -> "ImageBudget":
        """`cap`: the largest slice count this model's slicer can honour (None: no limit)."""
        for name in ("max_slice_nums", "max_pixels"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.max_slice_nums is not None and cap is not None and self.max_slice_nums > cap:
            raise InputError(f"max_slice_nums {self.max_slice_nums} is over what this model's slicer allows "
                             f"({cap}: mtmd at llama.cpp 0c1e570 slices at most {MTMD_MAX_SLICES} per image)")
        if self.max_pixels is not None and self.max_pixels < 28 * 28:
            raise InputError(f"max_pixels must be at least {28 * 28}, got {self.max_pixels}")
        return self


@dataclass(frozen=True)
class ImageCost:
    width: int  # what the slicer gets, after the budget's downscale
    height: int
    n_chunks: int  # encoder runs: 1 (overview) + slices
    grid: tuple[int, int]  # (columns, rows) of slices; (0, 0) when not sliced
    n_tokens: int  # context tokens of the image: its <image_id>N</image_id>, <image>/<slice> markers included
    n_embd_rows: int  # embedding rows the encoder produces (its work)

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "n_chunks": self.n_chunks,
                "grid": list(self.grid), "n_tokens": self.n_tokens, "n_embd_rows": self.n_embd_rows}


def fitted_size(width: int, height: int, max_slices: int | None, max_pixels: int | None,
                side: int = SLICE_SIDE) -> tuple[int, int]:
    """The size an image is shrunk to under a budget, with the C bridge's arithmetic
    (mobile_bridge/src/image.cpp target_size), so that Python and the C ABI encode the same size.

    `max_slices` (mtmd families; None for the processor-exact ones, whose processors take the cap):
    mtmd's LLaVA-UHD slicing makes ceil(area / side^2) slices, so below 9 the image shrinks until
    that fits (1 = no slicing: the longest side fits one slice). `max_pixels`: the area cap on top.
    One scale, the smaller of the two, is applied once (aspect kept)."""
    area = width * height
    scale = 1.0
    if max_slices is not None and 1 <= max_slices < MTMD_MAX_SLICES:
        scale = min(1.0, side / max(width, height)) if max_slices == 1 else \
            min(1.0, math.sqrt(max_slices * side * side / area) * 0.999)
    if max_pixels and area > max_pixels:
        scale = min(scale, math.sqrt(max_pixels / area))
    if scale >= 1.0:
        return width, height
    return max(2, int(width * scale)), max(2, int(height * scale))


def resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = rgb.shape[:2]
    if (w, h) == tuple(size):
        return rgb
    from PIL import Image as PILImage

    return np.asarray(PILImage.fromarray(rgb).resize(size, PILImage.BICUBIC))


def bitmap_id(digest: str, original: tuple[int, int], size: tuple[int, int], suffix: str = "") -> str:
    """The embedding-cache id of an image as encoded: its pixels' digest, plus the size it was shrunk to
    (the same photo under two budgets gives different slices, so different embeddings)."""
    return digest + ("" if tuple(size) == tuple(original) else f"@{size[0]}x{size[1]}") + suffix


__all__ = ["ImageBudget", "ImageCost", "MTMD_MAX_SLICES", "fitted_size", "resized", "bitmap_id"]
