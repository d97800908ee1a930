"""MiniCPM-V 4.0 (openbmb/MiniCPM-V-4): MiniCPM4-3B as a plain LlamaForCausalLM
(vLLM MiniCPMV4_0.init_llm), SentencePiece tokenizer, SigLIP + 2D resampler.

Its config carries a LongRoPE `rope_scaling` whose short and long factors are
equal; llama.cpp's `llama` graph applies per-dimension frequency factors from a
`rope_freqs` tensor (divisors of the base frequencies), which is exactly what
LongRoPE does below its original context, so we write the short factors there.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from gguf import GGMLQuantizationType, MODEL_ARCH

from minicpmv_edge.errors import UnsupportedModelError

from ..text_model import TextSpec
from ..writer import PlannedTensor
from .resampler_family import ResamplerFamily, slice_facts


class MiniCPMV40(ResamplerFamily):
    name = "minicpmv-4.0"
    model_version = "4.0"
    example = "openbmb/MiniCPM-V-4"
    text_arch = MODEL_ARCH.LLAMA
    projector_version = 5
    permute_qk = True  # HF Llama rotate-half layout -> llama.cpp interleaved

    def text_spec(self, config):
        spec = super().text_spec(config)
        # LongRoPE is written as rope_freqs below, not as a rope scaling type
        return replace(spec, hp=replace(spec.hp, rope_scaling=None))

    def extra_text_tensors(self, spec: TextSpec, config: dict, outtype):
        rs = config.get("rope_scaling") or {}
        if rs.get("rope_type", rs.get("type")) != "longrope":
            return []
        factors = _longrope_factors(rs, spec)
        return [PlannedTensor("rope_freqs.weight", factors.shape, GGMLQuantizationType.F32, lambda: factors)]

    def facts(self, config, preproc):
        return slice_facts(self.name, config, preproc)


def _longrope_factors(rs: dict, spec: TextSpec) -> np.ndarray:
    hp = spec.hp
    short = np.asarray(rs.get("short_factor") or [], dtype=np.float32)
    long = np.asarray(rs.get("long_factor") or [], dtype=np.float32)
    if short.shape != (hp.head_dim // 2,) or long.shape != short.shape:
        raise UnsupportedModelError(f"longrope factors must have {hp.head_dim // 2} entries")
    orig = int(rs.get("original_max_position_embeddings", hp.n_ctx_train))
    factor = hp.n_ctx_train / orig
    attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    if not np.array_equal(short, long) and hp.n_ctx_train > orig:
        raise UnsupportedModelError("longrope with distinct long factors beyond the original context is not supported")
    if attn != 1.0:
        raise UnsupportedModelError("longrope attention scaling != 1 is not supported")
    return short
