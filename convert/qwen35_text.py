"""Qwen3.5 text tower (MiniCPM-V 4.6: `model.language_model.*` + `lm_head.weight`) -> llama.cpp `qwen35`.

Qwen3.5 interleaves Gated-DeltaNet "linear attention" layers with gated full
attention layers. llama.cpp's qwen35 graph wants these weights in a slightly
different form than Hugging Face stores them (facts: ../facts/hf_layouts.md §5):

* V heads of the linear-attention layers regrouped from "grouped by K head"
  to "tiled" order when there are more V heads than K heads, so ggml can
  broadcast K over V with a plain repeat. This touches the V rows of
  `in_proj_qkv`, the rows of `in_proj_z`, `in_proj_a`, `in_proj_b`, `A_log`,
  `dt_bias`, the V channels of `conv1d`, and the columns of `out_proj`.
* `A_log` stored as `-exp(A_log)` (the graph multiplies by it directly).
* `dt_bias` is the bias of the (absent) dt projection: `ssm_dt.bias`.
* `conv1d.weight` (C, 1, K) squeezed to (C, K), kept F32 like llama.cpp does.
* Qwen3.5's RMSNorm computes x*(1+w); llama.cpp's computes x*w, so every
  `*norm.weight` gets +1 except the gated `linear_attn.norm`, which is a plain
  x*w norm.

Names come from gguf's map for MODEL_ARCH.QWEN35 (it knows `linear_attn.*`).
Multi-token-prediction weights (`mtp.*`) are not used by llama.cpp's decoder
and are consumed without being written, as llama.cpp's own converter does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, MODEL_ARCH

from minicpmv_edge import schema
from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from .dtypes import text_tensor_type
from .safetensors_reader import Checkpoint
from .text_model import TextHParams, add_rope_scaling, add_shape_hparams
from .writer import PlannedTensor

ARCH = MODEL_ARCH.QWEN35
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]  # "qwen35"
DEFAULT_MROPE_SECTION = [11, 11, 10, 0]  # written when the config has none; the loader requires the key

_LM = "model.language_model."
_MTP_PREFIXES = ("mtp.", "model.mtp.", _LM + "mtp.")
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Qwen35HParams:
    """The Qwen3.5 text config (`text_config` of a 4.6 checkpoint)."""

    base: TextHParams
    layer_types: tuple[str, ...]
    n_k_heads: int  # linear_num_key_heads
    n_v_heads: int  # linear_num_value_heads
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int
    partial_rotary_factor: float
    mrope_section: tuple[int, ...] | None
    full_attention_interval: int
    rope_parameters: dict

    @property
    def conv_dim(self) -> int:
        return 2 * self.n_k_heads * self.head_k_dim + self.n_v_heads * self.head_v_dim

    @property
    def rope_dim(self) -> int:
        return int(self.base.head_dim * self.partial_rotary_factor)

    def is_linear(self, layer: int) -> bool:
        return self.layer_types[layer] == "linear_attention"

    @classmethod
    def from_config(cls, cfg: dict, source) -> "Qwen35HParams":
        base = TextHParams.from_config(cfg, source)
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        try:
            n_layer = base.n_layer
            interval = int(cfg.get("full_attention_interval", 4))
            types = cfg.get("layer_types")
            if types is None:  # the HF default: every `interval`-th layer is full attention
                types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layer)]
            hp = cls(
                base=base,
                layer_types=tuple(types),
                n_k_heads=int(cfg["linear_num_key_heads"]),
                n_v_heads=int(cfg["linear_num_value_heads"]),
                head_k_dim=int(cfg["linear_key_head_dim"]),
                head_v_dim=int(cfg["linear_value_head_dim"]),
                conv_kernel=int(cfg["linear_conv_kernel_dim"]),
                partial_rotary_factor=float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25))),
                mrope_section=tuple(int(x) for x in rope["mrope_section"]) if rope.get("mrope_section") else None,
                full_attention_interval=interval,
                rope_parameters=rope,
            )
        except KeyError as exc:
            raise CheckpointError(f"config.json text_config lacks {exc.args[0]!r}", source) from None
        if len(hp.layer_types) != n_layer:
            raise CheckpointError(
                f"text_config.layer_types has {len(hp.layer_types)} entries but num_hidden_layers={n_layer}", source)
        bad = sorted(set(hp.layer_types) - {"linear_attention", "full_attention"})
        if bad:
            raise UnsupportedModelError(f"unknown Qwen3.5 layer types {bad}", source)
        if hp.n_v_heads % hp.n_k_heads:
            raise CheckpointError(
                f"linear_num_value_heads={hp.n_v_heads} is not a multiple of linear_num_key_heads={hp.n_k_heads}",
                source)
        if hp.head_k_dim != hp.head_v_dim:
            # llama.cpp's qwen35 loader sizes both from ssm.state_size (src/models/qwen35.cpp:55-56)
            raise UnsupportedModelError(
                f"linear_key_head_dim={hp.head_k_dim} != linear_value_head_dim={hp.head_v_dim}, "
                "which llama.cpp's qwen35 graph does not support", source)
        if hp.mrope_section is not None and len(hp.mrope_section) > 4:
            raise UnsupportedModelError(f"mrope_section {list(hp.mrope_section)} has more than 4 parts", source)
        return hp


def reorder_v_heads(x: np.ndarray, axis: int, n_k: int, n_v_per_k: int, head_dim: int) -> np.ndarray:
    """V heads along `axis` from grouped-by-K order [K0v0, K0v1, .., K1v0, ..] to tiled
    order [K0v0, K1v0, .., K0v1, K1v1, ..] (what ggml's repeat-broadcast expects)."""
    x = np.moveaxis(x, axis, 0)
    rest = x.shape[1:]
    x = x.reshape(n_k, n_v_per_k, head_dim, *rest).swapaxes(0, 1).reshape(n_k * n_v_per_k * head_dim, *rest)
    return np.ascontiguousarray(np.moveaxis(x, 0, axis))


def transform(local: str, arr: np.ndarray, hp: Qwen35HParams) -> np.ndarray:
    """Apply llama.cpp's Qwen3.5 tensor transforms to one tensor (`local` is the HF name
    with `language_model.` removed, before any renaming)."""
    if hp.n_k_heads != hp.n_v_heads and "linear_attn." in local:
        nk, r = hp.n_k_heads, hp.n_v_heads // hp.n_k_heads
        qk = 2 * hp.n_k_heads * hp.head_k_dim
        if ".in_proj_qkv." in local:
            arr = np.concatenate([arr[:qk], reorder_v_heads(arr[qk:], 0, nk, r, hp.head_v_dim)], axis=0)
        elif ".in_proj_z." in local:
            arr = reorder_v_heads(arr, 0, nk, r, hp.head_v_dim)
        elif ".in_proj_a." in local or ".in_proj_b." in local:
            arr = reorder_v_heads(arr, 0, nk, r, 1)
        elif local.endswith((".A_log", ".dt_bias")):
            arr = reorder_v_heads(arr, arr.ndim - 1, nk, r, 1)
        elif ".conv1d." in local:
            sq = arr.reshape(arr.shape[0], -1)
            arr = np.concatenate([sq[:qk], reorder_v_heads(sq[qk:], 0, nk, r, hp.head_v_dim)], axis=0)
        elif ".out_proj." in local:
            arr = reorder_v_heads(arr, 1, nk, r, hp.head_v_dim)
    if local.endswith(".A_log"):
        # exp in float64, rounded once to float32: what torch's float32 exp gives llama.cpp's
        # converter (numpy's float32 exp is 1 ulp off on some values)
        arr = -np.exp(arr.astype(np.float64)).astype(np.float32)
    elif ".conv1d." in local:
        arr = arr.reshape(arr.shape[0], -1)  # (C, 1, K) -> (C, K)
    elif local.endswith("norm.weight") and not local.endswith("linear_attn.norm.weight"):
        arr = arr + np.float32(1.0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def expected_shapes(hp: Qwen35HParams, n_vocab_rows: int) -> dict[str, tuple[int, ...]]:
    """Shape contract per GGUF name pattern, in the *output* (transformed) form."""
    b = hp.base
    h, hd = b.n_embd, b.head_dim
    vdim = hp.n_v_heads * hp.head_v_dim
    return {
        "token_embd.weight": (n_vocab_rows, h),
        "output.weight": (n_vocab_rows, h),
        "output_norm.weight": (h,),
        "blk.{i}.attn_norm.weight": (h,),
        "blk.{i}.post_attention_norm.weight": (h,),
        # full attention: q_proj carries query and output gate per head (qwen35.cpp:68)
        "blk.{i}.attn_q.weight": (2 * b.n_head * hd, h),
        "blk.{i}.attn_k.weight": (b.n_head_kv * hd, h),
        "blk.{i}.attn_v.weight": (b.n_head_kv * hd, h),
        "blk.{i}.attn_output.weight": (h, b.n_head * hd),
        "blk.{i}.attn_q_norm.weight": (hd,),
        "blk.{i}.attn_k_norm.weight": (hd,),
        # linear attention (qwen35.cpp:77-85)
        "blk.{i}.attn_qkv.weight": (hp.conv_dim, h),
        "blk.{i}.attn_gate.weight": (vdim, h),
        "blk.{i}.ssm_conv1d.weight": (hp.conv_dim, hp.conv_kernel),
        "blk.{i}.ssm_dt.bias": (hp.n_v_heads,),
        "blk.{i}.ssm_a": (hp.n_v_heads,),
        "blk.{i}.ssm_beta.weight": (hp.n_v_heads, h),
        "blk.{i}.ssm_alpha.weight": (hp.n_v_heads, h),
        "blk.{i}.ssm_norm.weight": (hp.head_v_dim,),
        "blk.{i}.ssm_out.weight": (h, vdim),
        "blk.{i}.ffn_gate.weight": (b.n_ff, h),
        "blk.{i}.ffn_up.weight": (b.n_ff, h),
        "blk.{i}.ffn_down.weight": (h, b.n_ff),
    }


_COMMON = ("attn_norm.weight", "post_attention_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
_REQUIRED = {
    "full": _COMMON + ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                       "attn_q_norm.weight", "attn_k_norm.weight"),
    "linear": _COMMON + ("attn_qkv.weight", "attn_gate.weight", "ssm_conv1d.weight", "ssm_dt.bias", "ssm_a",
                         "ssm_beta.weight", "ssm_alpha.weight", "ssm_norm.weight", "ssm_out.weight"),
}


def _out_shape(local: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if ".conv1d." in local and len(shape) == 3 and shape[1] == 1:
        return (shape[0], shape[2])
    return tuple(shape)


def is_text_tensor(name: str) -> bool:
    return name.startswith(_LM) or name.startswith("lm_head.") or name.startswith(_MTP_PREFIXES)


def plan_qwen35_text(ckpt: Checkpoint, hp: Qwen35HParams, outtype, moe=None) -> tuple[list[PlannedTensor], set[str]]:
    """Plan every text tensor; returns the plan and every source name consumed (MTP included).
    `moe`: a qwen35moe_text.MoeHParams, which plans the mixture-of-experts feed-forward (4.7 MoE)."""
    b = hp.base
    tmap = gguf.get_tensor_name_map(moe.arch if moe is not None else ARCH, b.n_layer)
    plan: list[PlannedTensor] = []
    used: set[str] = set()
    per_block: dict[int, set[str]] = {}
    rows = None
    for src in ckpt.names():
        if not is_text_tensor(src):
            continue
        used.add(src)
        if src.startswith(_MTP_PREFIXES) or src.endswith(_IGNORED_SUFFIXES):
            continue  # multi-token prediction: llama.cpp's decoder does not use it
        local = "model." + src[len(_LM):] if src.startswith(_LM) else src
        moe_plan = moe.plan_tensor(ckpt, src, local, b.n_embd, outtype, per_block) if moe is not None else None
        if moe_plan is not None:
            plan += moe_plan
            continue
        lookup = local[: -len(".dt_bias")] + ".dt_proj.bias" if local.endswith(".dt_bias") else local
        name = tmap.get_name(lookup, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedModelError(f"no llama.cpp name for text tensor {src!r}", ckpt.dir)
        shape = _out_shape(local, ckpt.shape(src))
        parts = name.split(".")
        pat = name
        if parts[0] == "blk":
            blk = int(parts[1])
            if blk >= b.n_layer:
                raise CheckpointError(
                    f"tensor {src!r} is in block {blk} but text_config says num_hidden_layers={b.n_layer}",
                    ckpt.refs[src].file)
            kind = ".".join(parts[2:])
            pat = "blk.{i}." + kind
            per_block.setdefault(blk, set()).add(kind)
        if name == "token_embd.weight":
            rows = shape[0]
        want = expected_shapes(hp, shape[0]).get(pat)
        if want is not None and tuple(shape) != tuple(want):
            raise CheckpointError(
                f"tensor {src!r} has shape {list(ckpt.shape(src))} but config.json implies {list(want)}",
                ckpt.refs[src].file)
        qtype = GGMLQuantizationType.F32 if ".ssm_conv1d." in name else text_tensor_type(name, shape, outtype)
        untransformed = "linear_attn." not in local and not local.endswith(("norm.weight", ".A_log", ".dt_bias"))
        plan.append(PlannedTensor(name, shape, qtype, _producer(ckpt, src, local, hp),
                                  source=src if untransformed else None))
    if rows is None:
        raise CheckpointError(f"no token embedding under {_LM!r}", ckpt.dir)
    if rows < b.n_vocab:
        raise CheckpointError(f"token embedding has {rows} rows but config.json says vocab_size={b.n_vocab}", ckpt.dir)
    names = {t.name for t in plan}
    if "output_norm.weight" not in names:
        raise CheckpointError("text tensor model.language_model.norm.weight is missing", ckpt.dir)
    if "output.weight" not in names and not b.tie_embeddings:
        raise CheckpointError("lm_head.weight is missing and tie_word_embeddings is false", ckpt.dir)
    for i in range(b.n_layer):
        kind = "linear" if hp.is_linear(i) else "full"
        required = set(_REQUIRED[kind])
        if moe is not None:
            required = (required - {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}) | set(moe.required)
        missing = sorted(required - per_block.get(i, set()))
        if missing:
            raise CheckpointError(
                f"text block {i} ({hp.layer_types[i]}) lacks {missing[:4]} (layer_types in config.json "
                "must match the weights)", ckpt.dir)
    return plan, used


def _producer(ckpt: Checkpoint, src: str, local: str, hp: Qwen35HParams) -> Callable[[], np.ndarray]:
    return lambda: transform(local, ckpt.load(src), hp)


def add_qwen35_hparams(w: GGUFWriter, hp: Qwen35HParams) -> None:
    """Every `qwen35.*` key llama.cpp's converter writes for a dense Qwen3.5 (no MTP)."""
    b = hp.base
    add_shape_hparams(w, b)
    kind = hp.rope_parameters.get("rope_type", hp.rope_parameters.get("type"))
    if kind not in (None, "default"):
        add_rope_scaling(w, replace(b, rope_scaling=hp.rope_parameters))
    section = list(hp.mrope_section) if hp.mrope_section is not None else list(DEFAULT_MROPE_SECTION)
    w.add_rope_dimension_sections((section + [0, 0, 0, 0])[:4])  # INT32 array of 4
    w.add_rope_freq_base(b.rope_theta)
    w.add_layer_norm_rms_eps(b.rms_eps)
    w.add_key_length(b.head_dim)
    w.add_value_length(b.head_dim)
    w.add_ssm_conv_kernel(hp.conv_kernel)
    w.add_ssm_state_size(hp.head_k_dim)
    w.add_ssm_group_count(hp.n_k_heads)
    w.add_ssm_time_step_rank(hp.n_v_heads)
    w.add_ssm_inner_size(hp.head_v_dim * hp.n_v_heads)
    w.add_array(schema.LLM_RECURRENT_LAYERS.format(arch=w.arch), [t == "linear_attention" for t in hp.layer_types])
    w.add_full_attention_interval(hp.full_attention_interval)
    w.add_rope_dimension_count(hp.rope_dim)
