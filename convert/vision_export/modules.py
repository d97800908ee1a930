"""Plain torch forwards of MiniCPM-V's vision side, written for export (no data-dependent
Python, no HF classes): one module per projector kind, parameter names equal to the
checkpoint's so weights load with a strict `load_state_dict`.

The math is llama.cpp's graph (tools/mtmd/models/minicpmv.cpp), which is what the
exported encoder replaces, and matches the reference forwards in tests/reference/:

- SigLIP tower: conv patch embedding, + learned position table indexed by bucketed ids
  (floor(70*i/h), clip.cpp:4702-4718), pre-LN layers with gelu-tanh MLPs, post LN.
- Resampler (2.6/4.0/4.5): q = ln_q(query); x = ln_kv(kv_proj(x)); attention with
  key = x + 2D sin-cos(row, col), value = x, E/128 heads; ln_post; x @ proj.
- 4.6 merger: after layer `insert_layer_id` (16x mode) a 2x2 window-attention merger
  (window-major order, then concat 4 -> LN -> MLP(gelu-tanh) + window mean), the rest of
  the layers, post LN, then the final 2x2 concat -> LN -> MLP(gelu-erf) -> text width.

Grid-dependent indices are graph *inputs* (see positions.py), so one graph serves every
slice grid; fixed-grid exports (CoreML) bake them in with `FixedGrid`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int) -> torch.Tensor:
    """[..., Lq, D] x [..., Lk, D] -> [..., Lq, D], heads split off D (explicit matmul/softmax:
    converts cleanly to ONNX opset 17 and CoreML)."""
    *lead, lq, d = q.shape
    lk = k.shape[-2]
    hd = d // n_head
    q = q.reshape(*lead, lq, n_head, hd).transpose(-3, -2)
    k = k.reshape(*lead, lk, n_head, hd).transpose(-3, -2)
    v = v.reshape(*lead, lk, n_head, hd).transpose(-3, -2)
    w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)), dim=-1)
    return torch.matmul(w, v).transpose(-3, -2).reshape(*lead, lq, d)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.n_head))


class MLP(nn.Module):
    def __init__(self, dim: int, ff: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ff), nn.Linear(ff, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, ff: int, n_head: int, eps: float):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, n_head)
        self.mlp = MLP(dim, ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, dim: int, patch: int, n_pos: int):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, dim, patch, stride=patch)
        self.position_embedding = nn.Embedding(n_pos, dim)

    def forward(self, pixel_values: torch.Tensor, pos_ids: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [1, N, V], row-major patches
        return x + self.position_embedding(pos_ids).unsqueeze(0)


class Encoder(nn.Module):
    def __init__(self, n_layer: int, dim: int, ff: int, n_head: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, ff, n_head, eps) for _ in range(n_layer))


class SiglipTower(nn.Module):
    """`vpm.*` (2.6/4.0/4.5) or `model.vision_tower.*` (4.6) without the merger."""

    def __init__(self, dim: int, ff: int, n_head: int, n_layer: int, patch: int, eps: float, n_pos: int):
        super().__init__()
        self.embeddings = Embeddings(dim, patch, n_pos)
        self.encoder = Encoder(n_layer, dim, ff, n_head, eps)
        self.post_layernorm = nn.LayerNorm(dim, eps=eps)


class Resampler(nn.Module):
    """`resampler.*`: one cross-attention of `query_num` learned queries over the patches."""

    HEAD_DIM = 128  # minicpmv.cpp:75-76

    def __init__(self, vision_dim: int, text_dim: int, query_num: int):
        super().__init__()
        E = text_dim
        self.query = nn.Parameter(torch.zeros(query_num, E))
        self.kv_proj = nn.Linear(vision_dim, E, bias=False)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(E, eps=1e-6), nn.LayerNorm(E, eps=1e-6), nn.LayerNorm(E, eps=1e-6)
        self.attn = nn.Module()
        self.attn.in_proj_weight = nn.Parameter(torch.zeros(3 * E, E))
        self.attn.in_proj_bias = nn.Parameter(torch.zeros(3 * E))
        self.attn.out_proj = nn.Linear(E, E)
        self.proj = nn.Parameter(torch.zeros(E, E))

    def sincos(self, pos_hw: torch.Tensor) -> torch.Tensor:
        """[N, 2] (row, col) -> [N, E] float32: [sin(col w), cos(col w), sin(row w), cos(row w)].
        Always float32 (angles reach ~70 rad; fp16 would lose them); omega[i] = 10000^(-i/(E/4))
        as clip.cpp 4734-4741, a traced constant rather than a weight."""
        n = self.query.shape[1] // 4
        omega = 1.0 / torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                                torch.arange(n, dtype=torch.float64) / n)
        omega = omega.to(torch.float32)
        pos_hw = pos_hw.to(torch.float32)
        th = pos_hw[:, 0:1] * omega
        tw = pos_hw[:, 1:2] * omega
        return torch.cat([torch.sin(tw), torch.cos(tw), torch.sin(th), torch.cos(th)], dim=1)

    def forward(self, x: torch.Tensor, pos_hw: torch.Tensor) -> torch.Tensor:
        E = self.query.shape[1]
        x = self.ln_kv(self.kv_proj(x))  # [N, E]
        q = self.ln_q(self.query)
        wq, wk, wv = self.attn.in_proj_weight.chunk(3, dim=0)
        bq, bk, bv = self.attn.in_proj_bias.chunk(3, dim=0)
        k = x + self.sincos(pos_hw).to(x.dtype)
        out = _attention(F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(x, wv, bv), E // self.HEAD_DIM)
        return self.ln_post(self.attn.out_proj(out)) @ self.proj


class ResamplerEncoder(nn.Module):
    """MiniCPM-V 2.6 / 4.0 / 4.5: pixels [1,3,H,W], pos_ids [N], pos_hw [N,2] -> [query_num, E]."""

    graph = "resampler"
    input_names = ("pixel_values", "pos_ids", "pos_hw")

    def __init__(self, vision: dict, text_dim: int, query_num: int):
        super().__init__()
        self.vpm = SiglipTower(**vision)
        self.resampler = Resampler(vision["dim"], text_dim, query_num)

    def forward(self, pixel_values: torch.Tensor, pos_ids: torch.Tensor, pos_hw: torch.Tensor) -> torch.Tensor:
        t = self.vpm
        x = t.embeddings(pixel_values, pos_ids)
        for layer in t.encoder.layers:
            x = layer(x)
        x = t.post_layernorm(x)[0]
        return self.resampler(x, pos_hw)


class WindowMerger(nn.Module):
    """4.6 `vit_merger`: attention inside 2x2 windows, then 4 tokens -> 1."""

    def __init__(self, dim: int, n_head: int, inter: int, eps: float):
        super().__init__()
        self.self_attn = SelfAttention(dim, n_head)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.pre_norm = nn.LayerNorm(4 * dim, eps=eps)
        self.linear_1, self.linear_2 = nn.Linear(4 * dim, inter), nn.Linear(inter, dim)

    def forward(self, x: torch.Tensor, window_idx: torch.Tensor) -> torch.Tensor:
        D = x.shape[-1]
        res = x[0].index_select(0, window_idx).reshape(-1, 4, D)  # [N/4, 4, D], window-major
        h = self.layer_norm1(x)[0].index_select(0, window_idx).reshape(-1, 4, D)
        h = res + self.self_attn(h)
        out = self.linear_2(F.gelu(self.linear_1(self.pre_norm(h.flatten(1))), approximate="tanh"))
        return (out + h.mean(dim=1)).unsqueeze(0)  # [1, N/4, D], downsampled grid row-major


class DownsampleMLP(nn.Module):
    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.pre_norm = nn.LayerNorm(4 * dim, eps=1e-6)
        self.linear_1, self.linear_2 = nn.Linear(4 * dim, 4 * dim), nn.Linear(4 * dim, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(self.pre_norm(x))))  # nn.GELU(): erf


class MergerTower(SiglipTower):
    def __init__(self, vision: dict, merger_inter: int | None):
        super().__init__(**vision)
        if merger_inter:
            self.vit_merger = WindowMerger(vision["dim"], vision["n_head"], merger_inter, vision["eps"])


class MergerEncoder(nn.Module):
    """MiniCPM-V 4.6: pixels, pos_ids [N], (window_idx [N] in 16x mode), merger_idx -> [tokens, E]."""

    graph = "merger"

    def __init__(self, vision: dict, text_dim: int, insert_layer_id: int, merger_inter: int | None):
        super().__init__()
        self.use_vit_merger = merger_inter is not None
        self.insert_layer_id = insert_layer_id
        self.input_names = ("pixel_values", "pos_ids") + (("window_idx",) if self.use_vit_merger else ()) + (
            "merger_idx",)
        self.model = nn.Module()
        self.model.vision_tower = MergerTower(vision, merger_inter)
        self.model.merger = nn.Module()
        self.model.merger.mlp = nn.ModuleList([DownsampleMLP(vision["dim"], text_dim)])

    def forward(self, pixel_values: torch.Tensor, pos_ids: torch.Tensor, *idx: torch.Tensor) -> torch.Tensor:
        t = self.model.vision_tower
        x = t.embeddings(pixel_values, pos_ids)
        for i, layer in enumerate(t.encoder.layers):
            x = layer(x)
            if self.use_vit_merger and i == self.insert_layer_id:
                x = t.vit_merger(x, idx[0])
        x = t.post_layernorm(x)[0]
        D = x.shape[-1]
        x = x.index_select(0, idx[-1]).reshape(-1, 4 * D)
        return self.model.merger.mlp[0](x)


class FixedGrid(nn.Module):
    """`inner` with the index inputs of one patch grid baked in: pixels -> embeddings.
    The weights are `inner`'s own (the same object the ONNX export and its test use)."""

    def __init__(self, inner: nn.Module, index_inputs: dict[str, torch.Tensor]):
        super().__init__()
        self.inner = inner
        self.names = [n for n in inner.input_names[1:]]
        for n in self.names:
            self.register_buffer(n, index_inputs[n], persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values, *[getattr(self, n) for n in self.names])
