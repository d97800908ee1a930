"""Text tower (Qwen2 / Qwen3 / Llama) of a checkpoint -> llama.cpp tensors and hparams.

Tensor names come from gguf's declarative map (`get_tensor_name_map`), so this
module only knows the few things that map does not: which source prefix holds
the language model, the Llama q/k row permutation, and the shape contract each
tensor must meet given config.json (checked before anything is written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gguf
import numpy as np
from gguf import GGUFWriter, MODEL_ARCH

from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from .dtypes import text_tensor_type
from .safetensors_reader import Checkpoint
from .writer import PlannedTensor

# tensors a checkpoint may carry that inference does not use
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TextHParams:
    """The text tower's shape, from config.json (flat for 2.6-4.5, `text_config` for 4.6)."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    rope_scaling: dict | None = None

    @classmethod
    def from_config(cls, cfg: dict, source: str) -> "TextHParams":
        try:
            n_head = int(cfg["num_attention_heads"])
            n_embd = int(cfg["hidden_size"])
            rope = cfg.get("rope_parameters") or {}
            return cls(
                n_vocab=int(cfg["vocab_size"]),
                n_embd=n_embd,
                n_layer=int(cfg["num_hidden_layers"]),
                n_ff=int(cfg["intermediate_size"]),
                n_head=n_head,
                n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
                head_dim=int(cfg.get("head_dim") or n_embd // n_head),
                n_ctx_train=int(cfg.get("max_position_embeddings", 4096)),
                rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
                rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                rope_scaling=cfg.get("rope_scaling"),
            )
        except KeyError as exc:
            raise CheckpointError(f"config.json lacks text key {exc.args[0]!r}", source) from None


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """HF Llama stores q/k rows for rotate-half RoPE; llama.cpp's `llama` graph wants
    them interleaved (convert_hf_to_gguf LlamaModel.permute)."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class TextSpec:
    arch: MODEL_ARCH
    prefix: str  # source prefix of the language model ("llm.")
    hp: TextHParams
    local_prefix: str = ""  # what replaces it so gguf's map knows the name ("model." for 4.6)
    permute_qk: bool = False
    extra_skip: tuple[str, ...] = ()
    expected: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


def expected_shapes(hp: TextHParams, n_vocab_rows: int) -> dict[str, tuple[int, ...]]:
    """Shape contract per GGUF tensor-name pattern ({i} for the block)."""
    h, hd = hp.n_embd, hp.head_dim
    q, kv = hp.n_head * hd, hp.n_head_kv * hd
    return {
        "token_embd.weight": (n_vocab_rows, h),
        "output.weight": (n_vocab_rows, h),
        "output_norm.weight": (h,),
        "blk.{i}.attn_norm.weight": (h,),
        "blk.{i}.ffn_norm.weight": (h,),
        "blk.{i}.attn_q.weight": (q, h),
        "blk.{i}.attn_q.bias": (q,),
        "blk.{i}.attn_k.weight": (kv, h),
        "blk.{i}.attn_k.bias": (kv,),
        "blk.{i}.attn_v.weight": (kv, h),
        "blk.{i}.attn_v.bias": (kv,),
        "blk.{i}.attn_output.weight": (h, q),
        "blk.{i}.attn_q_norm.weight": (hd,),
        "blk.{i}.attn_k_norm.weight": (hd,),
        "blk.{i}.ffn_gate.weight": (hp.n_ff, h),
        "blk.{i}.ffn_up.weight": (hp.n_ff, h),
        "blk.{i}.ffn_down.weight": (h, hp.n_ff),
    }


def _pattern(name: str) -> tuple[str, int | None]:
    parts = name.split(".")
    if parts[0] == "blk":
        return "blk.{i}." + ".".join(parts[2:]), int(parts[1])
    return name, None


def plan_text(ckpt: Checkpoint, spec: TextSpec, outtype) -> tuple[list[PlannedTensor], set[str]]:
    """Plan every text tensor; returns the plan and the source names it consumed."""
    hp = spec.hp
    tmap = gguf.get_tensor_name_map(spec.arch, hp.n_layer)
    rows = None
    plan: list[PlannedTensor] = []
    used: set[str] = set()
    seen_blocks: set[int] = set()
    for src in ckpt.names():
        if not src.startswith(spec.prefix):
            continue
        used.add(src)
        local = spec.local_prefix + src[len(spec.prefix):]
        if local.endswith(_IGNORED_SUFFIXES) or any(s in local for s in spec.extra_skip):
            continue
        name = tmap.get_name(local, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedModelError(f"no llama.cpp name for text tensor {src!r}", ckpt.dir)
        shape = ckpt.shape(src)
        pat, blk = _pattern(name)
        if blk is not None:
            if blk >= hp.n_layer:
                raise CheckpointError(
                    f"tensor {src!r} is in block {blk} but config.json says num_hidden_layers={hp.n_layer}",
                    ckpt.refs[src].file)
            seen_blocks.add(blk)
        if name == "token_embd.weight":
            rows = shape[0]
        want = spec.expected.get(pat) or expected_shapes(hp, shape[0] if name in ("token_embd.weight", "output.weight") else 0).get(pat)
        if want is not None and tuple(shape) != tuple(want):
            raise CheckpointError(
                f"tensor {src!r} has shape {list(shape)} but config.json implies {list(want)}", ckpt.refs[src].file)
        permuted = spec.permute_qk and name.endswith(("attn_q.weight", "attn_k.weight"))
        plan.append(PlannedTensor(name, tuple(shape), text_tensor_type(name, tuple(shape), outtype),
                                  _producer(ckpt, src, name, spec), source=None if permuted else src))
    if rows is None:
        raise CheckpointError(f"no token embedding under {spec.prefix!r}", ckpt.dir)
    if rows < hp.n_vocab:
        raise CheckpointError(f"token embedding has {rows} rows but config.json says vocab_size={hp.n_vocab}", ckpt.dir)
    missing = sorted(set(range(hp.n_layer)) - seen_blocks)
    if missing:
        raise CheckpointError(f"text blocks {missing[:5]} missing (config.json says {hp.n_layer} layers)", ckpt.dir)
    return plan, used


def _producer(ckpt: Checkpoint, src: str, name: str, spec: TextSpec) -> Callable[[], np.ndarray]:
    hp = spec.hp
    if spec.permute_qk and name.endswith("attn_q.weight"):
        return lambda: llama_permute(ckpt.load(src), hp.n_head, hp.n_head)
    if spec.permute_qk and name.endswith("attn_k.weight"):
        return lambda: llama_permute(ckpt.load(src), hp.n_head, hp.n_head_kv)
    return lambda: ckpt.load(src)


def add_shape_hparams(w: GGUFWriter, hp: TextHParams) -> None:
    """The `{arch}.*` shape keys every llama.cpp text architecture reads."""
    w.add_context_length(hp.n_ctx_train)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)


def add_text_hparams(w: GGUFWriter, spec: TextSpec) -> None:
    hp = spec.hp
    add_shape_hparams(w, hp)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.head_dim != hp.n_embd // hp.n_head or spec.arch == MODEL_ARCH.QWEN3:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    if spec.arch == MODEL_ARCH.LLAMA:
        w.add_rope_dimension_count(hp.head_dim)
        w.add_vocab_size(hp.n_vocab)
    add_rope_scaling(w, hp)


def add_rope_scaling(w: GGUFWriter, hp: TextHParams) -> None:
    rs = hp.rope_scaling
    if not rs:
        return
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rs["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rs["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))
    else:
        raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported yet")
