"""transformers' own forward and processor for the merger families (4.6, 4.7, MiniCPM-OCR 1.0).

The model is the checkpoint's own class (`MiniCPMV4_6ForConditionalGeneration`,
`MiniCPMV4_7ForConditionalGeneration`, `MiniCPMOcrForConditionalGeneration`) in float32. Inputs come
from the checkpoint's processor class (`MiniCPMV4_6Processor` / `MiniCPMV4_7Processor`; OCR's
processor is 4.6's) running its own placeholder expansion, image ids, tokenizer and, for 4.7,
`mm_token_type_ids`; positions are the model's own (`get_rope_index` for 4.7).

torchvision is not installed here (PyPI's torchvision needs a newer torch than the pinned CPU
build). 4.6 / 4.7 images go through `MiniCPMV4_6ImageProcessorPil` (what AutoImageProcessor picks
without torchvision); OCR images through OCR's own `MiniCPMOcrImageProcessor` (a torchvision class)
with torchvision's resize and normalize replaced by the torch ops torchvision runs
(tests/reference/video_processor.py). In this module's `inputs(videos=...)` video frames go through
the image processor with the video settings, packed as MiniCPMV4_6VideoProcessor packs them (NaViT,
`target_sizes_videos`, `grids_videos`), the placeholder text from the processor's own
`replace_video_token`; tests/test_video_stacked.py runs the real video processors instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def _classes(model_type: str):
    import transformers as tf
    from transformers.models.minicpm_ocr.processing_minicpm_ocr import MiniCPMOcrProcessor
    from transformers.models.minicpmv4_6.processing_minicpmv4_6 import MiniCPMV4_6Processor
    from transformers.models.minicpmv4_7.processing_minicpmv4_7 import MiniCPMV4_7Processor

    return {
        "minicpmv4_6": (tf.MiniCPMV4_6ForConditionalGeneration, MiniCPMV4_6Processor),
        "minicpmv4_7": (tf.MiniCPMV4_7ForConditionalGeneration, MiniCPMV4_7Processor),
        "minicpm_ocr": (tf.MiniCPMOcrForConditionalGeneration, MiniCPMOcrProcessor),
    }[model_type]


def _processor_class(base):
    class Processor(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":  # torchvision-only class; see the module docstring
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

        def _process_videos(self, videos, **kwargs):
            settings = self.video_settings
            out, replacements = [], []
            for video in videos:
                frames = [np.asarray(f) for f in video]
                pv = self.image_processor(frames, max_slice_nums=settings["max_slice_nums"],
                                          downsample_mode=settings["downsample_mode"], return_tensors="pt")
                out.append(pv)
                data = {"target_sizes_videos": pv["target_sizes"].numpy(),
                        "grids_videos": np.asarray(pv["grids"], dtype=np.int32),
                        "num_frames_per_video": [len(frames)]}
                div = 4 if settings["downsample_mode"] == "4x" else 16
                replacements.append(self.replace_video_token(data, video_idx=0, video_token_divisor=div))
            merged = {"pixel_values_videos": torch.cat([o["pixel_values"] for o in out], dim=-1),
                      "target_sizes_videos": torch.cat([o["target_sizes"] for o in out], dim=0)}
            return merged, replacements

    return Processor


class MergerReference:
    def __init__(self, ckpt_dir, video_max_slice_nums: int = 1):
        from transformers import AutoTokenizer
        from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

        self.dir = Path(ckpt_dir)
        cfg = json.loads((self.dir / "config.json").read_text())
        model_cls, proc_cls = _classes(cfg["model_type"])
        self.model = model_cls.from_pretrained(str(self.dir), dtype=torch.float32).eval()
        pp = json.loads((self.dir / "preprocessor_config.json").read_text())
        keep = ("max_slice_nums", "scale_resolution", "patch_size", "slice_mode", "downsample_mode", "use_image_id",
                "image_mean", "image_std")
        if cfg["model_type"] == "minicpm_ocr":  # its own class, torchvision's two calls replaced
            from tests.reference.video_processor import image_processor as ocr_image_processor

            image_processor = ocr_image_processor("minicpm_ocr", **{k: pp[k] for k in keep + ("small_image_upsize",)
                                                                     if k in pp})
        else:
            image_processor = MiniCPMV4_6ImageProcessorPil(**{k: pp[k] for k in keep if k in pp})
        from minicpmv_edge.fixtures.recipes.minicpmv_4_6 import MM46_TOKEN_ATTRS

        # the real tokenizer_config.json names none of the tokens the processor reads; give them here
        tokenizer = AutoTokenizer.from_pretrained(str(self.dir), extra_special_tokens=dict(MM46_TOKEN_ATTRS))
        mode = pp.get("downsample_mode", cfg.get("downsample_mode", "16x"))
        video = SimpleNamespace(slice_mode=True, downsample_mode=mode)
        self.processor = _processor_class(proc_cls)(image_processor=image_processor, video_processor=video,
                                                    tokenizer=tokenizer)
        self.processor.video_settings = {"max_slice_nums": video_max_slice_nums, "downsample_mode": mode}
        self.downsample_mode = mode

    def inputs(self, text: str, images=None, videos=None):
        kw = {}
        if images:
            kw["images"] = [list(images)]
        if videos:
            kw["videos"] = list(videos)
        return self.processor(text=[text], return_tensors="pt", **kw)

    @torch.no_grad()
    def next_token_logits(self, inputs) -> np.ndarray:
        out = self.model(**inputs, use_cache=False)
        return out.logits[0, -1].float().numpy().astype(np.float32)

    @torch.no_grad()
    def image_features(self, inputs) -> list[np.ndarray]:
        """Per-crop embeddings [tokens, hidden] in processor order."""
        feats = self.model.model.get_image_features(inputs["pixel_values"], inputs["target_sizes"],
                                                    downsample_mode=self.downsample_mode).pooler_output
        return [f.float().numpy() for f in feats]


def processor_text(prompt: str, marker: str, video_frames: list[int] | None = None) -> str:
    """Our runtime's prompt text with its image markup mapped back to the processor placeholders:
    `<image_id>i</image_id>` + marker -> `<|image_pad|>` (the processor writes the id itself) and a
    video's run of frame markers -> `<|video_pad|>`."""
    for n in video_frames or []:
        prompt = re.sub(r"(<image_id>\d+</image_id>)?" + re.escape(marker * n), "<|video_pad|>", prompt, count=1)
    return re.sub(r"(<image_id>\d+</image_id>)?" + re.escape(marker), "<|image_pad|>", prompt)
