"""Image crops cut exactly as transformers' processors cut them, pixel for pixel (no model needed).

4.6 / 4.7: `MiniCPMV4_6ImageProcessorPil` (PIL bicubic; what transformers picks without
torchvision). MiniCPM-OCR 1.0: its own `MiniCPMOcrImageProcessor`, a torchvision class whose two
torchvision calls are replaced by the torch ops torchvision runs (tests/reference/video_processor.py),
with both upsizing rules the runtime accepts. For every image: the grid, every crop's size and every
normalised pixel (after resize, rescale and normalise) equal the processor's output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minicpmv_edge.edge_runtime.processor_images import ImageSpec, layout

# (width, height): photo-sized and sliced, wide, tall, small (upscaled or kept), just over one slice
SIZES = [(1000, 600), (600, 1000), (1920, 1080), (3000, 500), (300, 200), (120, 90), (449, 449), (700, 500),
         (40, 300)]


def _image(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / (5 + c) + yy / (9 + 2 * c)) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)


def _crops(pv: torch.Tensor, sizes: torch.Tensor, patch: int) -> list[np.ndarray]:
    """NaViT-packed pixel_values [1, 3, patch, N] back to one HxWx3 array per crop."""
    out, at = [], 0
    for h, w in sizes.tolist():
        n = h * w * patch
        seg = pv[0, :, :, at:at + n].reshape(3, patch, h * w, patch).permute(0, 2, 1, 3)
        img = seg.reshape(3, h, w, patch, patch).permute(0, 1, 3, 2, 4).reshape(3, h * patch, w * patch)
        out.append(img.permute(1, 2, 0).numpy())
        at += n
    return out


def _compare(processor, spec: ImageSpec, rgb: np.ndarray, what: str) -> None:
    out = processor([Image.fromarray(rgb)], return_tensors="pt")
    want = _crops(out["pixel_values"], out["target_sizes"], spec.patch_size)
    lay = layout(rgb, spec)
    assert list(lay.grid) == list(out["grids"][0]), f"{what}: grid {lay.grid} vs the processor's {out['grids'][0]}"
    assert len(lay.crops) == len(want), f"{what}: {len(lay.crops)} crops vs the processor's {len(want)}"
    for k, (c, w) in enumerate(zip(lay.crops, want)):
        assert c.pixels.shape == w.shape, f"{what} crop {k}: {c.pixels.shape} vs {w.shape}"
        np.testing.assert_allclose(c.pixels, w, rtol=0, atol=1e-6, err_msg=f"{what} crop {k}")


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_pil_processor_crops(mode):
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    for max_slices in (9, 4):
        p = MiniCPMV4_6ImageProcessorPil(downsample_mode=mode, max_slice_nums=max_slices)
        spec = ImageSpec(downsample_mode=mode, max_slice_nums=max_slices)
        for k, (w, h) in enumerate(SIZES):
            _compare(p, spec, _image(w, h, k), f"4.6 {mode} max {max_slices} {w}x{h}")


@pytest.mark.parametrize("upsize", ["always", "never"])
def test_ocr_processor_crops(upsize):
    from tests.reference.video_processor import image_processor

    p = image_processor("minicpm_ocr", small_image_upsize=upsize, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    spec = ImageSpec(downsample_mode="4x", small_image_upsize=upsize, resample="torch")
    for k, (w, h) in enumerate(SIZES):
        _compare(p, spec, _image(w, h, 10 + k), f"OCR {upsize} {w}x{h}")


def test_ocr_needs_torchs_resize():
    """PIL's resize is not OCR's: the torch spec is what makes the OCR crops exact."""
    from tests.reference.video_processor import image_processor

    p = image_processor("minicpm_ocr", image_mean=[0.5] * 3, image_std=[0.5] * 3)
    rgb = _image(1000, 600, 1)
    out = p([Image.fromarray(rgb)], return_tensors="pt")
    want = _crops(out["pixel_values"], out["target_sizes"], 14)
    pil = layout(rgb, ImageSpec(downsample_mode="4x", resample="pil")).crops
    assert max(float(np.abs(c.pixels - w).max()) for c, w in zip(pil, want)) > 1e-3
