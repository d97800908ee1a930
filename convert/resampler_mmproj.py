"""SigLIP tower (`vpm.*`) + Perceiver resampler (`resampler.*`) -> llama.cpp mmproj.

Shared by MiniCPM-V 2.6, 4.0 and 4.5, whose checkpoints keep the vision parts
under these prefixes. What llama.cpp's MINICPMV projector needs and the generic
name maps get wrong (../shared/reference/llama-cpp-minicpmv.md, section 2):
`attn.in_proj_*` split into q/k/v; `proj` (used as `x @ proj`) transposed into
`proj.weight`; `pos_embed_k` present (the loader requires it, clip.cpp:2431);
`resampler.query` without `.weight`; fc1 -> ffn_up, fc2 -> ffn_down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from gguf import GGUFWriter, GGUFType

from minicpmv_edge import schema
from minicpmv_edge.errors import CheckpointError

from .dtypes import mmproj_tensor_type
from .safetensors_reader import Checkpoint
from .writer import PlannedTensor

SIGLIP_POS_ROWS = 4900  # clip.cpp hard-codes a 70x70 bucket grid (4707-4715)
RESAMPLER_HEAD_DIM = 128  # minicpmv.cpp:75-76 hard-codes d_head = 128


@dataclass(frozen=True)
class VisionHParams:
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int  # layers present in the checkpoint
    patch_size: int
    eps: float
    image_size: int  # slice size (448), top-level config `image_size`
    query_num: int
    text_n_embd: int

    @classmethod
    def from_config(cls, cfg: dict, ckpt: Checkpoint) -> "VisionHParams":
        vc = cfg.get("vision_config") or {}
        layers = {int(m.group(1)) for n in ckpt.names() if (m := re.match(r"vpm\.encoder\.layers\.(\d+)\.", n))}
        try:
            n_cfg = int(vc["num_hidden_layers"]) - (1 if cfg.get("drop_vision_last_layer") else 0)
            hp = cls(
                n_embd=int(vc["hidden_size"]), n_ff=int(vc["intermediate_size"]),
                n_head=int(vc["num_attention_heads"]), n_layer=len(layers),
                patch_size=int(vc.get("patch_size", 14)), eps=float(vc.get("layer_norm_eps", 1e-6)),
                image_size=int(cfg.get("image_size", 448)), query_num=int(cfg.get("query_num", 64)),
                text_n_embd=int(cfg["hidden_size"]),
            )
        except KeyError as exc:
            raise CheckpointError(f"config.json lacks vision key {exc.args[0]!r}", ckpt.dir / "config.json") from None
        if layers != set(range(n_cfg)):
            raise CheckpointError(
                f"checkpoint has vision layers {sorted(layers)[:3]}..{max(layers, default=-1)} "
                f"but config.json implies {n_cfg}", ckpt.dir)
        if hp.text_n_embd % RESAMPLER_HEAD_DIM:
            raise CheckpointError(
                f"hidden_size {hp.text_n_embd} is not a multiple of {RESAMPLER_HEAD_DIM}, "
                "which llama.cpp's resampler requires", ckpt.dir / "config.json")
        return hp


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE-style 2D sin-cos table, (grid_h*grid_w, embed_dim), width half first.
    Only written to satisfy the loader: clip.cpp recomputes positions per slice."""
    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    return np.concatenate([one_d(embed_dim // 2, gw), one_d(embed_dim // 2, gh)], axis=1).astype(np.float32)


_VPM_RENAMES = [
    (r"^vpm\.embeddings\.patch_embedding\.(weight|bias)$", r"v.patch_embd.\1"),
    (r"^vpm\.embeddings\.position_embedding\.weight$", "v.position_embd.weight"),
    (r"^vpm\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", r"v.blk.\1.attn_q.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)$", r"v.blk.\1.attn_k.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)$", r"v.blk.\1.attn_v.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)$", r"v.blk.\1.attn_out.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)$", r"v.blk.\1.ln1.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)$", r"v.blk.\1.ln2.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"v.blk.\1.ffn_up.\2"),
    (r"^vpm\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"v.blk.\1.ffn_down.\2"),
    (r"^vpm\.post_layernorm\.(weight|bias)$", schema.TN_VISION_POST_LN + r".\1"),
    (r"^resampler\.query$", "resampler.query"),
    (r"^resampler\.kv_proj\.weight$", "resampler.kv.weight"),
    (r"^resampler\.attn\.out_proj\.(weight|bias)$", r"resampler.attn.out.\1"),
    (r"^resampler\.ln_(q|kv|post)\.(weight|bias)$", r"resampler.ln_\1.\2"),
]
# vpm.head.* is SigLIP's pooling head, unused by MiniCPM-V (vision_use_head=False)
_SKIP = (r"^vpm\.head\.",)


def plan_resampler_mmproj(ckpt: Checkpoint, hp: VisionHParams, outtype) -> tuple[list[PlannedTensor], set[str]]:
    plan: list[PlannedTensor] = []
    used: set[str] = set()

    def add(name: str, shape: tuple[int, ...], produce, source: str | None = None) -> None:
        plan.append(PlannedTensor(name, tuple(shape), mmproj_tensor_type(name, tuple(shape), outtype), produce,
                                  source=source))

    E = hp.text_n_embd
    for src in ckpt.names():
        if not src.startswith(("vpm.", "resampler.")):
            continue
        used.add(src)
        shape = ckpt.shape(src)
        if any(re.match(p, src) for p in _SKIP):
            continue
        if src in ("resampler.attn.in_proj_weight", "resampler.attn.in_proj_bias"):
            if shape[0] != 3 * E:
                raise CheckpointError(f"tensor {src!r} has {shape[0]} rows, expected 3*{E}", ckpt.refs[src].file)
            kind = "weight" if src.endswith("weight") else "bias"
            for j, part in enumerate("qkv"):
                add(f"resampler.attn.{part}.{kind}", (E, *shape[1:]),
                    lambda s=src, j=j: ckpt.load(s)[j * E:(j + 1) * E])
            continue
        if src == "resampler.proj":
            if shape != (E, E):
                raise CheckpointError(f"tensor {src!r} has shape {list(shape)}, expected {[E, E]}", ckpt.refs[src].file)
            add(schema.TN_RESAMPLER_PROJ, shape, lambda s=src: np.ascontiguousarray(ckpt.load(s).T))
            add(schema.TN_RESAMPLER_POS_EMBED_K, (SIGLIP_POS_ROWS, E), lambda: sincos_2d(E, 70, 70))
            continue
        if src == "resampler.pos_embed":
            continue  # older checkpoints' cached table; llama.cpp recomputes it
        for pat, repl in _VPM_RENAMES:
            if re.match(pat, src):
                name = re.sub(pat, repl, src)
                break
        else:
            raise CheckpointError(f"unexpected vision tensor {src!r}", ckpt.refs[src].file)
        _check_vision_shape(ckpt, src, name, shape, hp)
        add(name, shape, lambda s=src: ckpt.load(s), source=src)
    names = {t.name for t in plan}
    for required in ("v.patch_embd.weight", "v.position_embd.weight", "resampler.query", "resampler.kv.weight",
                     "resampler.attn.q.weight", schema.TN_RESAMPLER_PROJ, "v.post_ln.weight"):
        if required not in names:
            raise CheckpointError(f"vision tensor for {required!r} is missing", ckpt.dir)
    return plan, used


def _check_vision_shape(ckpt: Checkpoint, src: str, name: str, shape: tuple[int, ...], hp: VisionHParams) -> None:
    V, E = hp.n_embd, hp.text_n_embd
    want = {
        "v.position_embd.weight": (SIGLIP_POS_ROWS, V),
        "v.patch_embd.weight": (V, 3, hp.patch_size, hp.patch_size),
        "resampler.query": (hp.query_num, E),
        "resampler.kv.weight": (E, V),
    }.get(name)
    if name.startswith("v.blk."):
        kind = name.split(".", 3)[3]
        want = {"attn_q.weight": (V, V), "attn_k.weight": (V, V), "attn_v.weight": (V, V),
                "attn_out.weight": (V, V), "ffn_up.weight": (hp.n_ff, V), "ffn_down.weight": (V, hp.n_ff)}.get(kind)
    if want is not None and tuple(shape) != want:
        raise CheckpointError(f"tensor {src!r} has shape {list(shape)} but config.json implies {list(want)}",
                              ckpt.refs[src].file)


def add_siglip_keys(w: GGUFWriter, projector_type: str, hp, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> None:
    """The keys every MiniCPM-V mmproj carries for its SigLIP tower, with the exact types
    clip.cpp reads (clip.cpp:1221-1415); `hp` has n_embd, n_ff, n_head, n_layer, patch_size,
    image_size (the slice size, 448), text_n_embd and eps."""
    w.add_type(GGUFType.MMPROJ)
    w.add_bool(schema.CLIP_HAS_VISION, True)
    w.add_string(schema.CLIP_PROJECTOR_TYPE, projector_type)
    w.add_vision_image_size(hp.image_size)
    w.add_vision_patch_size(hp.patch_size)
    w.add_vision_embedding_length(hp.n_embd)
    w.add_vision_feed_forward_length(hp.n_ff)
    w.add_vision_head_count(hp.n_head)
    w.add_vision_block_count(hp.n_layer)
    w.add_vision_projection_dim(hp.text_n_embd)
    w.add_vision_attention_layernorm_eps(hp.eps)
    w.add_vision_image_mean(list(mean))  # MiniCPM-V's processors normalise with 0.5/0.5
    w.add_vision_image_std(list(std))
    w.add_vision_use_gelu(True)  # SigLIP's gelu_pytorch_tanh == ggml_gelu


def add_resampler_mmproj_metadata(w: GGUFWriter, hp: VisionHParams, projector_version: int) -> None:
    """PROJECTOR_TYPE_MINICPMV: the SigLIP keys plus the resampler's version and query count."""
    add_siglip_keys(w, schema.PROJECTOR_RESAMPLER, hp)
    w.add_int32(schema.CLIP_MINICPMV_VERSION_I32, projector_version)
    w.add_uint32(schema.CLIP_MINICPMV_QUERY_NUM_U32, hp.query_num)
