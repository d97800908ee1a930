"""transformers' own video processors for 4.6 / 4.7 / OCR, and OCR's image processor, runnable without
torchvision.

MiniCPMV4_6VideoProcessor (and OCR's copy) run every step in transformers' code: frame sampling
(`sample_frames`), sub-frame stacking (`concat_frames_as_image`), grids and sizes, slicing, NaViT
packing, and the processors' `replace_video_token`; MiniCPMOcrImageProcessor (a TorchvisionBackend,
OCR 1.0's only image processor) runs its own grid, sizes, upsizing rule and slicing. Only two calls
reach torchvision, which cannot
be installed here (PyPI's torchvision 0.28 wheel is the CUDA build and does not load against the
pinned CPU torch 2.13). They are replaced by exactly what torchvision 0.28 executes for these
inputs:

- `resize` (uint8 CPU tensor, BICUBIC, antialias): transforms/v2/functional/_geometry.py
  resize_image takes the native uint8 path (`_do_native_uint8_resize_on_cpu` is true for
  BICUBIC) and calls `torch.nn.functional.interpolate(image, size, mode="bicubic",
  align_corners=False, antialias=True)` on the uint8 batch;
- `normalize` (float32): transforms/v2/functional/_misc.py normalize_image: `image.sub(mean)
  .div_(std)` with mean/std as float32 tensors viewed (-1, 1, 1).
"""

from __future__ import annotations

import torch


def _torchvision_free(base):
    class VideoProcessor(base):
        def resize(self, image, size, resample=None, antialias=True, **kwargs):
            # every resize these processors make is bicubic (their `resample` attribute and call sites)
            assert resample is None or int(resample) == 3, f"resample {resample!r} is not bicubic"
            assert image.dtype == torch.uint8, image.dtype  # torchvision's native uint8 path
            shape = image.shape
            x = image.reshape(-1, *shape[-3:])
            out = torch.nn.functional.interpolate(x, size=[size.height, size.width], mode="bicubic",
                                                  align_corners=False, antialias=antialias)
            return out.reshape(*shape[:-2], size.height, size.width)

        def normalize(self, image, mean, std, inplace=False, **kwargs):
            mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
            return image.sub(mean).div_(std)

    VideoProcessor.__name__ = base.__name__
    return VideoProcessor


def video_processor(model_type: str, **kwargs):
    if model_type == "minicpm_ocr":
        from transformers.models.minicpm_ocr.video_processing_minicpm_ocr import MiniCPMOcrVideoProcessor as base
    else:
        from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor as base
    return _torchvision_free(base)(**kwargs)


def image_processor(model_type: str, **kwargs):
    """MiniCPM-OCR 1.0's own image processor (4.6 / 4.7 have a PIL one: use that)."""
    if model_type != "minicpm_ocr":
        raise ValueError(f"{model_type}: use transformers' PIL image processor")
    from transformers.models.minicpm_ocr.image_processing_minicpm_ocr import MiniCPMOcrImageProcessor as base

    return _torchvision_free(base)(**kwargs)


__all__ = ["video_processor", "image_processor"]
