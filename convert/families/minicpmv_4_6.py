"""MiniCPM-V 4.6 (openbmb/MiniCPM-V-4.6): transformers-native `MiniCPMV4_6ForConditionalGeneration`.

Qwen3.5 hybrid text tower (`model.language_model.*` + `lm_head`) -> llama.cpp
`qwen35`; SigLIP + window-attention ViT merger + DownsampleMLP merger
(`model.vision_tower.*`, `model.merger.*`) -> mmproj of type `minicpmv4_6`.
The 16x / 4x token mode comes from preprocessor_config.json `downsample_mode`
(as llama.cpp's converter reads it) and is fixed in the mmproj.
"""

from __future__ import annotations

from pathlib import Path

from minicpmv_edge import model_facts, schema
from minicpmv_edge.errors import CheckpointError

from ..merger_mmproj import MergerVisionHParams, add_merger_mmproj_metadata, plan_merger_mmproj
from ..qwen35_text import ARCH_NAME, Qwen35HParams, add_qwen35_hparams, plan_qwen35_text
from ..safetensors_reader import Checkpoint
from ..tokenizer import add_vocab, read_vocab
from .base import ConversionPlan, Family, RuntimeFacts
from .resampler_family import read_preprocessor

TOKEN_DIVISOR = {"16x": 16, "4x": 4}  # processing_minicpmv4_6.replace_image_token


class MiniCPMV46(Family):
    name = "minicpmv-4.6"
    model_version = "4.6"
    example = "openbmb/MiniCPM-V-4.6"

    @classmethod
    def matches(cls, config: dict, src: Path) -> bool:
        return ("MiniCPMV4_6ForConditionalGeneration" in (config.get("architectures") or [])
                or config.get("model_type") == "minicpmv4_6")

    def facts(self, preproc: dict, vhp: MergerVisionHParams) -> RuntimeFacts:
        scale = int(preproc.get("scale_resolution", vhp.image_size))
        patch = int(preproc.get("patch_size", vhp.patch_size))
        return model_facts.from_checkpoint(self.name, preproc, {}, scale_resolution=scale, patch_size=patch,
                                           tokens_per_slice=(scale // patch) ** 2 // TOKEN_DIVISOR[vhp.downsample_mode])

    def text_hparams(self, text_cfg: dict, src: Path):
        """(Qwen35HParams, MoE hparams or None); 4.7 overrides it for its MoE text variant."""
        return Qwen35HParams.from_config(text_cfg, src / "config.json"), None

    def plan(self, src: Path, ckpt: Checkpoint, config: dict, outtype) -> ConversionPlan:
        text_cfg = config.get("text_config")
        if not isinstance(text_cfg, dict):
            raise CheckpointError("config.json has no text_config object", src / "config.json")
        hp, moe = self.text_hparams(text_cfg, src)
        text, used_t = plan_qwen35_text(ckpt, hp, outtype, moe)
        rows = next(t.shape[0] for t in text if t.name == "token_embd.weight")
        vocab = read_vocab(src, rows)
        preproc = read_preprocessor(src)
        vhp = MergerVisionHParams.from_config(config, preproc, ckpt)
        mm, used_v = plan_merger_mmproj(ckpt, vhp, outtype)

        def text_meta(w):
            add_qwen35_hparams(w, hp)
            if moe is not None:
                moe.write(w)
            add_vocab(w, src, vocab)

        def mm_meta(w):
            add_merger_mmproj_metadata(w, vhp)

        return ConversionPlan(ARCH_NAME if moe is None else moe.arch_name, text, text_meta, mm, mm_meta, schema.PROJECTOR_MINICPMV4_6, 0,
                              self.facts(preproc, vhp), used_t | used_v)
