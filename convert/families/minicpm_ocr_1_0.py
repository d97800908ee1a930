"""MiniCPM-OCR 1.0 (openbmb/MiniCPM-OCR-1.0): transformers-native `MiniCPMOcrForConditionalGeneration`.

Architecturally MiniCPM-V 4.6 (its model class subclasses `MiniCPMV4_6Model` and adds nothing):
Qwen3.5 text with tied embeddings -> `qwen35`, SigLIP + merger -> mmproj `minicpmv4_6`, in "4x"
token mode by default (config.json `downsample_mode`, read when preprocessor_config.json has none).
Its image processor adds `small_image_upsize` ("always" by default): how images and slices no
larger than scale_resolution² are resized. The runtime reproduces "always" and "never"; "adaptive"
runs a glyph classifier (OpenCV Otsu threshold + connected components) that we do not reproduce,
so such a checkpoint is refused rather than approximated.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter

from minicpmv_edge import schema
from minicpmv_edge.errors import UnsupportedModelError

from .minicpmv_4_6 import MiniCPMV46
from .resampler_family import read_preprocessor

UPSIZE_MODES = ("always", "never")


class MiniCPMOcr10(MiniCPMV46):
    name = "minicpm-ocr-1.0"
    model_version = "ocr-1.0"
    example = "openbmb/MiniCPM-OCR-1.0"

    @classmethod
    def matches(cls, config: dict, src: Path) -> bool:
        return ("MiniCPMOcrForConditionalGeneration" in (config.get("architectures") or [])
                or config.get("model_type") == "minicpm_ocr")

    def plan(self, src, ckpt, config: dict, outtype):
        upsize = str(read_preprocessor(src).get("small_image_upsize", "always"))
        if upsize not in UPSIZE_MODES:
            raise UnsupportedModelError(
                f"small_image_upsize {upsize!r}: the runtime reproduces {' and '.join(UPSIZE_MODES)} only "
                "(\"adaptive\" needs the processor's OpenCV glyph classifier)", src / "preprocessor_config.json")
        plan = super().plan(src, ckpt, config, outtype)
        base_meta = plan.add_text_metadata

        def text_meta(w: GGUFWriter) -> None:
            base_meta(w)
            w.add_string(schema.EDGE_SMALL_IMAGE_UPSIZE, upsize)

        plan.add_text_metadata = text_meta
        return plan
