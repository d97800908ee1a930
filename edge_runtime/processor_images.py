"""Images cut and normalised the way transformers' MiniCPM-V 4.6 / 4.7 / OCR processors do it.

mtmd's own preprocessing for the `minicpmv4_6` projector differs from the processors in ways the
model can see: it letterboxes the refined image in black before cutting slices (transformers
stretches it), stretches an unsliced small image to 448x448 (transformers keeps its aspect), and
decides slicing by either side > 448 (transformers by area). A 1000x600 photo was measured 8-9% of
the logit range off. So for these families the runtime lays images out here and hands the
normalised crops straight to llama.cpp's vision encoder (edge_runtime/clip_encoder.py).

Facts (transformers 5.24, models/minicpmv4_6/image_processing_pil_minicpmv4_6.py and
models/minicpm_ocr/modular_minicpm_ocr.py; this is our own implementation of the same rules):

- grid: ratio = w*h / scale²; multiple = min(ceil(ratio), max_slice_nums); no slices when
  multiple <= 1; otherwise over slice counts {multiple-1, multiple, multiple+1} (skipping 1 and
  > max) the (rows, cols) whose log(cols/rows) is closest to log(w/h), ties going to more rows.
- overview: when w*h > scale² or upscaling is allowed (no slices, or OCR's "always"), rescale to
  area scale² keeping the aspect (h = int(scale/sqrt(w/h)), w = int(h*w/h)); both sides then
  rounded to multiples of patch*merge (at least one), merge 4 for "16x", 2 for "4x".
- refined image: the cell size (w/cols, h/rows after rounding to the grid) resized as above with
  upscaling allowed, times the grid; slices are its row-major tiles.
- resize: PIL bicubic on the uint8 image; rescale x*(1/255) in float64 cast to float32; then
  (x - mean) / std in float32 (4.6 / 4.7: `MiniCPMV4_6ImageProcessorPil`, what transformers picks
  without torchvision).
- MiniCPM-OCR 1.0 ships only a torchvision image processor (`MiniCPMOcrImageProcessor`): the same
  geometry, resized by torch's uint8 antialiased bicubic and normalised fused in float32, which is
  the video processor's arithmetic (video_frames.py); `ImageSpec.resample = "torch"` selects it.
  PIL's weights move 0.3-0.9% of the pixels by 1-2 levels against it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

MERGE = {"16x": 4, "4x": 2}  # patch -> LLM-token merge factor per side


@dataclass(frozen=True)
class ImageSpec:
    """What the processor needs, from the GGUF pair (text metadata + mmproj)."""

    scale_resolution: int = 448
    patch_size: int = 14
    downsample_mode: str = "16x"
    max_slice_nums: int = 9
    slice_mode: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    small_image_upsize: str = "always"  # OCR: "never" keeps small unsliced images at native size
    resample: str = "pil"  # "pil": the PIL image processor; "torch": the torchvision one (OCR, video)

    @property
    def merge(self) -> int:
        return MERGE[self.downsample_mode]

    def key(self) -> str:
        return (f"{self.scale_resolution}/{self.patch_size}/{self.downsample_mode}/{self.max_slice_nums}/"
                f"{int(self.slice_mode)}/{self.mean}/{self.std}/{self.small_image_upsize}/{self.resample}")


@dataclass
class Crop:
    """One encoder input: the overview or a slice, normalised, HxWx3 float32 (RGBRGB...)."""

    width: int
    height: int
    pixels: np.ndarray
    digest: str

    def grid(self, patch: int) -> tuple[int, int]:
        """(rows, cols) in patches (transformers' `target_sizes`)."""
        return self.height // patch, self.width // patch

    def n_tokens(self, patch: int, merge: int) -> int:
        return (self.height // patch) * (self.width // patch) // (merge * merge)


@dataclass
class ImageLayout:
    crops: list[Crop]  # overview first, then slices row-major
    grid: tuple[int, int]  # (rows, cols) of slices, (0, 0) without slices
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each crop


def _ensure_divide(length: float, divisor: int) -> int:
    return max(round(length / divisor) * divisor, divisor)


def best_resize(height: float, width: float, spec: ImageSpec, allow_upscale: bool) -> tuple[int, int]:
    """(height, width) of a crop, as the processor's find_best_resize computes it."""
    scale = spec.scale_resolution
    if height * width > scale * scale or allow_upscale:
        aspect = width / height
        height = int(scale / math.sqrt(aspect))
        width = int(height * aspect)
    align = spec.patch_size * spec.merge
    return _ensure_divide(height, align), _ensure_divide(width, align)


def sliced_grid(height: int, width: int, spec: ImageSpec) -> tuple[int, int] | None:
    if not spec.slice_mode:
        return None
    log_ratio = math.log(width / height)
    multiple = min(math.ceil(width * height / (spec.scale_resolution ** 2)), spec.max_slice_nums)
    if multiple <= 1:
        return None
    best, best_err = (1, 1), float("inf")
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > spec.max_slice_nums:
            continue
        for rows in range(1, n + 1):
            if n % rows:
                continue
            err = abs(log_ratio - math.log((n // rows) / rows))
            if err < best_err or (err == best_err and rows > best[0]):
                best, best_err = (rows, n // rows), err
    return best


def refine_size(height: int, width: int, grid: tuple[int, int], spec: ImageSpec) -> tuple[int, int]:
    rows, cols = grid
    cell_h, cell_w = best_resize(_ensure_divide(height, rows) / rows, _ensure_divide(width, cols) / cols, spec, True)
    return cell_h * rows, cell_w * cols


def plan_sizes(width: int, height: int, spec: ImageSpec) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(width, height) of every crop (overview, then slices) and the (rows, cols) grid."""
    grid = sliced_grid(height, width, spec)
    upscale = grid is None and spec.small_image_upsize == "always"
    oh, ow = best_resize(height, width, spec, upscale)
    sizes = [(ow, oh)]
    if grid is None:
        return sizes, (0, 0)
    rh, rw = refine_size(height, width, grid, spec)
    sizes += [(rw // grid[1], rh // grid[0])] * (grid[0] * grid[1])
    return sizes, grid


def _normalise(rgb: np.ndarray, spec: ImageSpec) -> np.ndarray:
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _resize(img, width: int, height: int):
    from PIL import Image as PILImage

    return img if img.size == (width, height) else img.resize((width, height), PILImage.BICUBIC)


def layout(rgb: np.ndarray, spec: ImageSpec) -> ImageLayout:
    """Crops of one HxWx3 uint8 image, in the order the processor emits them."""
    from PIL import Image as PILImage

    if spec.resample == "torch":
        from .video_frames import layout as torch_layout  # video_frames builds on this module

        return torch_layout(rgb, spec)

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    sizes, grid = plan_sizes(width, height, spec)
    img = PILImage.fromarray(rgb)
    pieces = [np.asarray(_resize(img, *sizes[0]))]
    if grid != (0, 0):
        rows, cols = grid
        cw, ch = sizes[1]
        refined = np.asarray(_resize(img, cw * cols, ch * rows))
        pieces += [refined[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] for r in range(rows) for c in range(cols)]
    crops = []
    for (w, h), piece in zip(sizes, pieces):
        digest = hashlib.sha256(np.ascontiguousarray(piece).tobytes() + f"{w}x{h}/{spec.key()}".encode()).hexdigest()[:32]
        crops.append(Crop(w, h, _normalise(piece, spec), digest))
    return ImageLayout(crops, grid, sizes)


__all__ = ["ImageSpec", "Crop", "ImageLayout", "MERGE", "layout", "plan_sizes", "best_resize", "sliced_grid"]
