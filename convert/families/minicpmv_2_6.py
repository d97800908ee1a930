"""MiniCPM-V 2.6 (openbmb/MiniCPM-V-2_6): Qwen2-7B + SigLIP-400M + 2D resampler."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .resampler_family import ResamplerFamily, slice_facts


class MiniCPMV26(ResamplerFamily):
    name = "minicpmv-2.6"
    model_version = "2.6"
    example = "openbmb/MiniCPM-V-2_6"
    text_arch = MODEL_ARCH.QWEN2  # vLLM MiniCPMV2_6.init_llm -> Qwen2ForCausalLM
    projector_version = 3

    def facts(self, config, preproc):
        return slice_facts(self.name, config, preproc)
