"""MiniCPM-V 4.5's vision-tower patch features, computed by llama.cpp from the mmproj.

The 3D resampler (resampler3d.py) needs the SigLIP tower's output before any resampling, for
several frames at once. llama.cpp's encoder computes exactly that as an intermediate of its
MINICPMV graph; native/vit_features.cpp runs clip.cpp's own graph and copies that intermediate
out through a scheduler eval callback, stopping before clip.cpp's (single-image) resampler. Same
weights, same kernels as mtmd's image path; tests/test_video_packing.py compares the features
with transformers' SigLIP on the tiny fixture.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from minicpmv_edge.errors import GGUFError, MediaError, RuntimeFailure, UnsupportedModelError

from .clip_encoder import shim_path
from .engine import init_backend

SOURCE = Path(__file__).with_name("native") / "vit_features.cpp"
ABI_VERSION = 1
_LIB = None


def _load():
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(str(shim_path(SOURCE)))
        lib.edge_vit_abi_version.restype = ctypes.c_int
        if lib.edge_vit_abi_version() != ABI_VERSION:
            raise RuntimeFailure("vision-feature shim ABI mismatch; delete the clip-shim cache folder")
        lib.edge_vit_init.restype = ctypes.c_void_p
        lib.edge_vit_init.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.edge_vit_free.argtypes = [ctypes.c_void_p]
        lib.edge_vit_is_resampler.argtypes = [ctypes.c_void_p]
        lib.edge_vit_features.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int),
                                          ctypes.POINTER(ctypes.c_int)]
        _LIB = lib
    return _LIB


class VitFeatures:
    """The mmproj's SigLIP tower (with its post-layernorm), one frame at a time."""

    def __init__(self, mmproj_path: str | Path, n_threads: int = 2, use_gpu: bool = False, width: int = 1152):
        init_backend()
        self._lib = _load()
        self.path = str(mmproj_path)
        self.n_threads = int(n_threads)
        self.width = int(width)  # vision hidden size (clip.vision.embedding_length)
        self.ptr = self._lib.edge_vit_init(self.path.encode(), int(bool(use_gpu)))
        if not self.ptr:
            raise GGUFError("llama.cpp could not load this projector (see log with -v)", mmproj_path)
        if not self._lib.edge_vit_is_resampler(self.ptr):
            self.close()
            raise UnsupportedModelError("temporal packing needs MiniCPM-V's resampler projector", mmproj_path)

    def features(self, pixels: np.ndarray, patch_size: int = 14) -> np.ndarray:
        """HxWx3 normalised float32 -> [patches, width] float32, patches row-major."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != 3 or x.shape[0] % patch_size or x.shape[1] % patch_size:
            raise MediaError(f"expected HxWx3 pixels in whole patches, got {list(x.shape)}")
        h, w = x.shape[:2]
        n = (h // patch_size) * (w // patch_size)
        out = np.empty((n, self.width), np.float32)
        n_pos, n_embd = ctypes.c_int(0), ctypes.c_int(0)
        rc = self._lib.edge_vit_features(self.ptr, self.n_threads, w, h, x.ctypes.data, out.ctypes.data, out.size,
                                         ctypes.byref(n_pos), ctypes.byref(n_embd))
        if rc != 0:
            why = {1: "the vision encoder failed", 2: "the tower output was not found in llama.cpp's graph",
                   3: "the tower output is not a float32 tensor of the expected size"}.get(rc, f"code {rc}")
            raise RuntimeFailure(f"vision features of a {w}x{h} frame: {why}", self.path)
        if (n_pos.value, n_embd.value) != out.shape:
            raise RuntimeFailure(f"vision features came out {n_pos.value}x{n_embd.value}, expected {list(out.shape)}",
                                 self.path)
        return out

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.edge_vit_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


__all__ = ["VitFeatures"]
