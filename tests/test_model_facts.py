"""The one detection of GGUFs without minicpmv_edge.* keys, and the facts it yields."""

from __future__ import annotations

import pytest

from minicpmv_edge import model_facts, schema
from minicpmv_edge.errors import UnsupportedModelError

# what llama.cpp's converters write (legacy-models/minicpmv-convert-image-encoder-to-gguf.py for the
# resampler families, convert_hf_to_gguf.py --mmproj for 4.6), with the official vocabulary sizes
STANDARD = {
    "minicpmv-2.6": ("qwen2", 151666, {"clip.projector_type": "resampler", "clip.minicpmv_version": 3}),
    "minicpmv-4.0": ("llama", 73448, {"clip.projector_type": "resampler", "clip.minicpmv_version": 5}),
    "minicpmv-4.5": ("qwen3", 151748, {"clip.projector_type": "resampler", "clip.minicpmv_version": 6}),
    "minicpmv-4.6": ("qwen35", 248094, {"clip.projector_type": "minicpmv4_6", "clip.vision.image_size": 448,
                                        "clip.vision.patch_size": 14, "clip.vision.projector.scale_factor": 4}),
}


@pytest.mark.parametrize("family", sorted(STANDARD))
def test_detect_from_standard_keys(family):
    arch, n_vocab, mm = STANDARD[family]
    text = {"general.architecture": arch}
    assert model_facts.detect(text, n_vocab, mm).family == family
    assert model_facts.detect(text, n_vocab).family == family  # text alone: architecture + vocabulary
    facts, own = model_facts.from_gguf(text, n_vocab, mm)
    assert not own and facts.family == family and facts.tokens_per_slice == 64


def test_detection_refuses_what_it_cannot_tell():
    with pytest.raises(UnsupportedModelError, match="not a MiniCPM-V GGUF"):
        model_facts.detect({"general.architecture": "qwen3"}, 151936)  # plain Qwen3: not MiniCPM-V
    with pytest.raises(UnsupportedModelError, match="projector 'resampler' version 3"):
        model_facts.detect({"general.architecture": "qwen3"}, 151748,
                           {"clip.projector_type": "resampler", "clip.minicpmv_version": 3})
    with pytest.raises(UnsupportedModelError):
        model_facts.detect({"general.architecture": "llama"}, None)


def test_4x_projector_gives_256_tokens_per_slice_and_our_keys_win():
    arch, n_vocab, mm = STANDARD["minicpmv-4.6"]
    facts, _ = model_facts.from_gguf({"general.architecture": arch}, n_vocab,
                                     {**mm, "clip.vision.projector.scale_factor": 2})
    assert facts.tokens_per_slice == 256
    ours = {"general.architecture": arch, schema.EDGE_FAMILY: "minicpmv-4.6", schema.EDGE_PROMPT_USE_IMAGE_ID: False,
            schema.EDGE_PROMPT_STOP: ["<|im_end|>"]}
    facts, own = model_facts.from_gguf(ours, n_vocab, mm)
    assert own and facts.use_image_id is False and facts.stop == ("<|im_end|>",)
