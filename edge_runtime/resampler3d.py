"""MiniCPM-V 4.5's 3D resampler in numpy: up to six frames' patch features -> 64 tokens.

llama.cpp's MINICPMV graph resamples one image at a time; 4.5's video recipe lets the 64 learned
queries attend over the concatenated keys of a group of consecutive frames (the model card's
`temporal_ids` groups). Facts from the checkpoint's own resampler.py (read, not copied):

- per frame: x = ln_kv(x @ kv^T); values are x; keys are x + the frame's 2D sin-cos table
  (first half encodes the patch column, second half the row; omega_i = 10000^(-i / (E/4)))
  + a 1D sin-cos embedding of the frame's temporal id over the full width
  (omega_i = 10000^(-i / (E/2)); a temporal id of -1 adds nothing);
- q = ln_q(query); multi-head attention (E/128 heads, nn.MultiheadAttention's in/out
  projections) of the 64 queries over all keys of the group; ln_post; @ proj.
LayerNorm eps is 1e-6 (resampler.py's norm_layer). Weights come from the mmproj (llama.cpp's
names: resampler.kv.weight, resampler.attn.{q,k,v,out}.*, resampler.ln_*, resampler.proj.weight
stored transposed, resampler.query). tests/test_video_packing.py runs the real resampler.py
on the same features and requires cosine >= 0.999 per token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicpmv_edge.errors import GGUFError

HEAD_DIM = 128  # resampler.py init: num_heads = embed_dim // 128 (llama.cpp: d_head = 128)
EPS = 1e-6
NAMES = ("query", "kv.weight", "attn.q.weight", "attn.q.bias", "attn.k.weight", "attn.k.bias", "attn.v.weight",
         "attn.v.bias", "attn.out.weight", "attn.out.bias", "ln_q.weight", "ln_q.bias", "ln_kv.weight",
         "ln_kv.bias", "ln_post.weight", "ln_post.bias", "proj.weight")


def _sincos(dim: int, pos: np.ndarray) -> np.ndarray:
    """[len(pos), dim]: sin then cos of pos * omega, omega_i = 10000^(-i/(dim/2)), in float32 as
    resampler.py computes its tables."""
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.outer(pos.reshape(-1).astype(np.float32), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)


def pos_2d(dim: int, h: int, w: int) -> np.ndarray:
    """[h*w, dim], patches row-major: column encoding then row encoding."""
    cols = np.tile(np.arange(w, dtype=np.float32), h)
    rows = np.repeat(np.arange(h, dtype=np.float32), w)
    return np.concatenate([_sincos(dim // 2, cols), _sincos(dim // 2, rows)], axis=1)


def pos_temporal(dim: int, temporal_id: int) -> np.ndarray:
    if temporal_id < 0:
        return np.zeros(dim, np.float32)
    return _sincos(dim, np.array([temporal_id], np.float32))[0]


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    np.exp(x, out=x)
    return x / x.sum(-1, keepdims=True)


class Resampler3D:
    """The resampler of a 4.5 mmproj, for groups of frames."""

    def __init__(self, weights: dict[str, np.ndarray]):
        missing = [n for n in NAMES if n not in weights]
        if missing:
            raise GGUFError(f"the projector has no resampler.{missing[0]} tensor")
        self.w = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
        self.n_query, self.dim = self.w["query"].shape
        self.kv_dim = self.w["kv.weight"].shape[1]
        if self.dim % HEAD_DIM:
            raise GGUFError(f"resampler width {self.dim} is not a multiple of {HEAD_DIM}")
        self.n_head = self.dim // HEAD_DIM
        w = self.w
        self._q = self._heads(_layer_norm(w["query"], w["ln_q.weight"], w["ln_q.bias"]) @ w["attn.q.weight"].T
                              + w["attn.q.bias"])

    @classmethod
    def from_mmproj(cls, path: str | Path) -> "Resampler3D":
        from gguf import GGUFReader
        from gguf.quants import dequantize

        try:
            reader = GGUFReader(str(path))
        except Exception as exc:  # noqa: BLE001 - gguf raises bare ValueError/struct errors
            raise GGUFError(f"cannot read ({exc})", path) from None
        out = {}
        for t in reader.tensors:
            if t.name.startswith("resampler."):
                arr = np.asarray(dequantize(np.asarray(t.data), t.tensor_type), np.float32)
                out[t.name[len("resampler."):]] = arr.reshape([int(d) for d in reversed(t.shape)])
        try:
            return cls(out)
        except GGUFError as exc:
            raise GGUFError(exc.problem, path) from None

    def _heads(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], self.n_head, HEAD_DIM).transpose(1, 0, 2)  # [heads, n, d]

    def __call__(self, frames: list[np.ndarray], grids: list[tuple[int, int]], temporal_ids: list[int]) -> np.ndarray:
        """frames: per frame [h*w, kv_dim] tower features; grids: per frame (h, w) in patches;
        temporal_ids: per frame. Returns [n_query, dim] for the group."""
        if not (len(frames) == len(grids) == len(temporal_ids)) or not frames:
            raise ValueError("one grid and one temporal id per frame, at least one frame")
        w = self.w
        keys, values = [], []
        for x, (h, wd), tid in zip(frames, grids, temporal_ids):
            if x.shape != (h * wd, self.kv_dim):
                raise ValueError(f"frame features {list(x.shape)} do not match a {h}x{wd} grid of {self.kv_dim}")
            v = _layer_norm(x.astype(np.float32) @ w["kv.weight"].T, w["ln_kv.weight"], w["ln_kv.bias"])
            values.append(v)
            keys.append(v + pos_2d(self.dim, h, wd) + pos_temporal(self.dim, tid))
        k = self._heads(np.concatenate(keys) @ w["attn.k.weight"].T + w["attn.k.bias"])
        v = self._heads(np.concatenate(values) @ w["attn.v.weight"].T + w["attn.v.bias"])
        att = _softmax(self._q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(HEAD_DIM)))
        out = (att @ v).transpose(1, 0, 2).reshape(self.n_query, self.dim)
        out = out @ w["attn.out.weight"].T + w["attn.out.bias"]
        out = _layer_norm(out, w["ln_post.weight"], w["ln_post.bias"])
        return np.ascontiguousarray(out @ w["proj.weight"].T, np.float32)


__all__ = ["Resampler3D", "pos_2d", "pos_temporal"]
