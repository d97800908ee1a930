"""Shared shape of MiniCPM-V 2.6 / 4.0 / 4.5: `llm.*` text model, `vpm.*` SigLIP,
`resampler.*` Perceiver resampler, one flat config.json (model_type "minicpmv",
told apart by its `version` key, as vLLM's loader does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from gguf import MODEL_ARCH

from minicpmv_edge import model_facts, schema

from ..resampler_mmproj import VisionHParams, add_resampler_mmproj_metadata, plan_resampler_mmproj
from ..safetensors_reader import Checkpoint
from ..text_model import TextHParams, TextSpec, add_text_hparams, plan_text
from ..tokenizer import add_vocab, read_vocab
from .base import ConversionPlan, Family, RuntimeFacts


def read_preprocessor(src: Path) -> dict:
    p = src / "preprocessor_config.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


class ResamplerFamily(Family):
    text_arch: ClassVar[MODEL_ARCH]
    projector_version: ClassVar[int]  # clip.minicpmv_version (legacy-models/...-to-gguf.py:504)
    permute_qk: ClassVar[bool] = False

    @classmethod
    def matches(cls, config: dict, src: Path) -> bool:
        return config.get("model_type") == "minicpmv" and str(config.get("version")) == cls.model_version

    def facts(self, config: dict, preproc: dict) -> RuntimeFacts:
        raise NotImplementedError

    def text_spec(self, config: dict) -> TextSpec:
        return TextSpec(self.text_arch, "llm.", TextHParams.from_config(config, "config.json"),
                        permute_qk=self.permute_qk)

    def extra_text_tensors(self, spec: TextSpec, config: dict, outtype):
        return []

    def plan(self, src: Path, ckpt: Checkpoint, config: dict, outtype) -> ConversionPlan:
        spec = self.text_spec(config)
        text, used_t = plan_text(ckpt, spec, outtype)
        text += self.extra_text_tensors(spec, config, outtype)
        rows = next(t.shape[0] for t in text if t.name == "token_embd.weight")
        vocab = read_vocab(src, rows)
        vhp = VisionHParams.from_config(config, ckpt)
        mm, used_v = plan_resampler_mmproj(ckpt, vhp, outtype)
        preproc = read_preprocessor(src)
        facts = self.facts(config, preproc)

        def text_meta(w):
            add_text_hparams(w, spec)
            add_vocab(w, src, vocab)

        def mm_meta(w):
            add_resampler_mmproj_metadata(w, vhp, self.projector_version)

        return ConversionPlan(spec.arch_name, text, text_meta, mm, mm_meta, schema.PROJECTOR_RESAMPLER,
                              self.projector_version, facts, used_t | used_v)


def slice_facts(family: str, config: dict, preproc: dict) -> RuntimeFacts:
    """The family's shared record with this checkpoint's slice settings and query count."""
    return model_facts.from_checkpoint(family, preproc, config, tokens_per_slice=int(config.get("query_num", 64)))
