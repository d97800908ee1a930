"""The mixture-of-experts feed-forward of a Qwen3.5 MoE text tower (MiniCPM-V 4.7 with a
`qwen3_5_moe_text` text_config) -> llama.cpp `qwen35moe`.

Everything but the feed-forward is qwen35_text.py's (same attention, same linear-attention
transforms); this module plans the MLP of each block, as llama.cpp's converter does
(conversion/qwen.py Qwen2MoeModel.modify_tensors, Qwen3_5MoeTextModel):

* per-expert `mlp.experts.{x}.{gate,up,down}_proj.weight` (how save_pretrained and the Hub store
  them) are stacked into `ffn_{gate,up,down}_exps` [E, ...];
* a fused `mlp.experts.gate_up_proj` [E, 2*ff, h] is split on its middle axis into `ffn_gate_exps` and
  `ffn_up_exps` [E, ff, h]; `mlp.experts.down_proj` [E, h, ff] -> `ffn_down_exps`;
* the router `mlp.gate.weight` [E, h] -> `ffn_gate_inp`;
* the shared expert `mlp.shared_expert.{gate,up,down}_proj` -> `ffn_{gate,up,down}_shexp`, and its
  sigmoid gate `mlp.shared_expert_gate.weight` [1, h] -> `ffn_gate_inp_shexp` [h] (llama.cpp loads it
  1-D, src/models/qwen35moe.cpp).

llama.cpp normalises the top-k routing weights and gates with softmax, as transformers'
Qwen3_5MoeTopKRouter does.
"""

from __future__ import annotations

import re

import numpy as np
from dataclasses import dataclass

from gguf import GGUFWriter, MODEL_ARCH

from minicpmv_edge.errors import CheckpointError

from .dtypes import text_tensor_type
from .safetensors_reader import Checkpoint
from .writer import PlannedTensor

ARCH = MODEL_ARCH.QWEN35MOE
ARCH_NAME = "qwen35moe"
REQUIRED = ("ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
            "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight", "ffn_gate_inp_shexp.weight")
_MLP = re.compile(r"model\.layers\.(\d+)\.mlp\.(.+)")
_EXPERT = re.compile(r"experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


@dataclass(frozen=True)
class MoeHParams:
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ff_shexp: int
    arch = ARCH
    arch_name = ARCH_NAME
    required = REQUIRED

    @classmethod
    def from_config(cls, cfg: dict, source) -> "MoeHParams":
        try:
            return cls(int(cfg["num_experts"]), int(cfg["num_experts_per_tok"]), int(cfg["moe_intermediate_size"]),
                       int(cfg["shared_expert_intermediate_size"]))
        except KeyError as exc:
            raise CheckpointError(f"config.json text_config lacks {exc.args[0]!r} (a Qwen3.5 MoE text model)",
                                  source) from None

    def shapes(self, h: int) -> dict[str, tuple[int, ...]]:
        e, f, s = self.n_expert, self.n_ff_exp, self.n_ff_shexp
        return {"gate.weight": (e, h), "experts.gate_up_proj": (e, 2 * f, h), "experts.down_proj": (e, h, f),
                "shared_expert.gate_proj.weight": (s, h), "shared_expert.up_proj.weight": (s, h),
                "shared_expert.down_proj.weight": (h, s), "shared_expert_gate.weight": (1, h)}

    def plan_tensor(self, ckpt: Checkpoint, src: str, local: str, h: int, outtype,
                    per_block: dict[int, set[str]]) -> list[PlannedTensor] | None:
        """The GGUF tensors of one MLP source tensor, or None when `local` is not an MLP tensor."""
        m = _MLP.fullmatch(local)
        if m is None:
            return None
        blk, part = int(m[1]), m[2]
        if (x := _EXPERT.fullmatch(part)) is not None:
            return self._stacked(ckpt, src, blk, int(x[1]), x[2], h, outtype, per_block)
        want = self.shapes(h).get(part)
        if want is None:
            raise CheckpointError(f"unexpected MoE tensor {src!r}", ckpt.refs[src].file)
        shape = tuple(ckpt.shape(src))
        if shape != want:
            raise CheckpointError(f"tensor {src!r} has shape {list(shape)} but config.json implies {list(want)}",
                                  ckpt.refs[src].file)

        def one(kind: str, out_shape, produce, source=None) -> PlannedTensor:
            per_block.setdefault(blk, set()).add(kind)
            name = f"blk.{blk}.{kind}"
            return PlannedTensor(name, tuple(out_shape), text_tensor_type(name, tuple(out_shape), outtype), produce,
                                 source=source)

        if part == "experts.gate_up_proj":
            e, f2, hh = shape
            f = f2 // 2
            return [one("ffn_gate_exps.weight", (e, f, hh), lambda: ckpt.load(src)[:, :f, :].copy()),
                    one("ffn_up_exps.weight", (e, f, hh), lambda: ckpt.load(src)[:, f:, :].copy())]
        if part == "shared_expert_gate.weight":
            return [one("ffn_gate_inp_shexp.weight", (h,), lambda: ckpt.load(src).reshape(-1).copy())]
        kind = {"experts.down_proj": "ffn_down_exps.weight", "gate.weight": "ffn_gate_inp.weight",
                "shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
                "shared_expert.up_proj.weight": "ffn_up_shexp.weight",
                "shared_expert.down_proj.weight": "ffn_down_shexp.weight"}[part]
        return [one(kind, shape, lambda: ckpt.load(src), source=src)]

    def _stacked(self, ckpt: Checkpoint, src: str, blk: int, expert: int, w: str, h: int, outtype,
                 per_block) -> list[PlannedTensor]:
        """Per-expert tensors (how save_pretrained and the Hub store them) stacked into one [E, ...]
        tensor per block and kind, planned at expert 0; the other experts are only checked."""
        want = (self.n_ff_exp, h) if w in ("gate_proj", "up_proj") else (h, self.n_ff_exp)
        shape = tuple(ckpt.shape(src))
        if shape != want:
            raise CheckpointError(f"tensor {src!r} has shape {list(shape)} but config.json implies {list(want)}",
                                  ckpt.refs[src].file)
        if expert >= self.n_expert:
            raise CheckpointError(f"tensor {src!r} is expert {expert} but num_experts={self.n_expert}",
                                  ckpt.refs[src].file)
        if expert:
            return []
        names = [src.replace(f".experts.0.{w}.", f".experts.{x}.{w}.") for x in range(self.n_expert)]
        absent = [n for n in names if n not in ckpt.refs]
        if absent:
            raise CheckpointError(f"MoE tensor {absent[0]!r} is missing", ckpt.dir)
        kind = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight",
                "down_proj": "ffn_down_exps.weight"}[w]
        per_block.setdefault(blk, set()).add(kind)
        name = f"blk.{blk}.{kind}"
        out = (self.n_expert, *want)
        return [PlannedTensor(name, out, text_tensor_type(name, out, outtype),
                              lambda: np.stack([ckpt.load(n) for n in names]))]

    def write(self, w: GGUFWriter) -> None:
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)
