"""MiniCPM-V 4.5 (openbmb/MiniCPM-V-4_5): Qwen3-8B + SigLIP + (3D) resampler.

The 3D resampler's temporal packing is not in llama.cpp; single images use the
same projector as 2.6 (clip.minicpmv_version 6)."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .resampler_family import ResamplerFamily, slice_facts


class MiniCPMV45(ResamplerFamily):
    name = "minicpmv-4.5"
    model_version = "4.5"
    example = "openbmb/MiniCPM-V-4_5"
    text_arch = MODEL_ARCH.QWEN3
    projector_version = 6  # clip.cpp:4175-4176 calls 6 "MiniCPM-V 4.5"

    def facts(self, config, preproc):
        return slice_facts(self.name, config, preproc)
