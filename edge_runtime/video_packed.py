"""MiniCPM-V 4.5's temporal packing: groups of frames -> 64 embeddings each.

A group's frames are prepared as the checkpoint's image processor prepares video frames
(image_processing_minicpmv.py with max_slice_nums=1: no slices, resized with PIL bicubic to the
448x448 area keeping the aspect, sides rounded to whole 14-pixel patches, x/255 then
(x - mean)/std), run through llama.cpp's vision tower (vit_features.py: its patch features, before
any resampling) and resampled together by the 3D resampler (resampler3d.py) with each frame's
temporal id. In the prompt a group stands where the model card's chat() puts one image
placeholder; mtmd lays out `<image>` + 64 positions + `</image>` for a placeholder bitmap and the
session feeds these embeddings there (engine.Bitmap.embed).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .processor_images import best_resize
from .resampler3d import Resampler3D
from .vit_features import VitFeatures

# what mtmd gets for a group: any bitmap <= 448 px makes one unsliced 64-token chunk; the pixels
# are never encoded (the session feeds the group's own embeddings)
PLACEHOLDER = np.full((28, 28, 3), 127, np.uint8)


@dataclass(frozen=True)
class _Geometry:
    scale_resolution: int = 448
    patch_size: int = 14
    merge: int = 1


def frame_size(width: int, height: int, scale: int = 448, patch: int = 14) -> tuple[int, int]:
    """(width, height) of a video frame after 4.5's processor (find_best_resize, upscaling allowed)."""
    h, w = best_resize(height, width, _Geometry(scale, patch), True)
    return w, h


def prepare_frame(rgb: np.ndarray, scale: int = 448, patch: int = 14) -> np.ndarray:
    from PIL import Image as PILImage

    h, w = rgb.shape[:2]
    size = frame_size(w, h, scale, patch)
    if size == (w, h):
        return np.ascontiguousarray(rgb)
    return np.asarray(PILImage.fromarray(rgb).resize(size, PILImage.BICUBIC))


@dataclass
class PackedGroup:
    """One 3D-resampler group of a video: its frames (already resized, uint8) and temporal ids."""

    frames: list[np.ndarray]
    temporal_ids: list[int]
    digest: str = ""
    rgb: np.ndarray = field(default_factory=lambda: PLACEHOLDER)
    embed: Callable[[], np.ndarray] | None = None  # set by the model that will read the group

    def __post_init__(self):
        if not self.digest:
            h = hashlib.blake2b(digest_size=16, person=b"packed-group")
            for f, t in zip(self.frames, self.temporal_ids):
                h.update(str((f.shape, int(t))).encode())
                h.update(np.ascontiguousarray(f).tobytes())
            self.digest = h.hexdigest()


class PackedEncoder:
    """The mmproj's tower (llama.cpp) + its resampler (numpy, 3D), loaded on first use."""

    def __init__(self, mmproj_path: str, mm_kv: dict, n_threads: int = 2, use_gpu: bool = False):
        self.path = mmproj_path
        self.mean = np.asarray(mm_kv.get("clip.vision.image_mean", [0.5] * 3), np.float32)[:3]
        self.std = np.asarray(mm_kv.get("clip.vision.image_std", [0.5] * 3), np.float32)[:3]
        self.patch = int(mm_kv.get("clip.vision.patch_size", 14))
        self.width = int(mm_kv.get("clip.vision.embedding_length", 1152))
        self.n_threads, self.use_gpu = n_threads, use_gpu
        self._vit: VitFeatures | None = None
        self._resampler: Resampler3D | None = None
        self.tower_ms: list[float] = []  # per frame
        self.resampler_ms: list[float] = []  # per group

    def _load(self) -> None:
        if self._vit is None:
            self._vit = VitFeatures(self.path, self.n_threads, self.use_gpu, width=self.width)
            self._resampler = Resampler3D.from_mmproj(self.path)

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        x = (rgb.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
        return np.ascontiguousarray(x, np.float32)

    def features(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        self._load()
        t0 = time.perf_counter()
        feats = self._vit.features(self.normalise(rgb), self.patch)
        self.tower_ms.append((time.perf_counter() - t0) * 1e3)
        return feats, (rgb.shape[0] // self.patch, rgb.shape[1] // self.patch)

    def encode(self, group: PackedGroup) -> np.ndarray:
        feats, grids = zip(*(self.features(f) for f in group.frames))
        t0 = time.perf_counter()
        out = self._resampler(list(feats), list(grids), list(group.temporal_ids))
        self.resampler_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    def close(self) -> None:
        if self._vit is not None:
            self._vit.close()
            self._vit = None


__all__ = ["PackedGroup", "PackedEncoder", "prepare_frame", "frame_size", "PLACEHOLDER"]
