"""MiniCPMV's load options (a frozen dataclass; keyword overrides checked by name)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from minicpmv_edge.errors import InputError

from .media import MediaLimits


@dataclass(frozen=True)
class LoadOptions:
    n_ctx: int = 4096
    n_threads: int | None = None  # default: physical cores
    n_batch: int = 512
    n_gpu_layers: int = 0  # Metal/CUDA builds: layers to offload (-1 = all)
    mmproj_gpu: bool = False  # run the vision encoder on the GPU backend
    max_slices: int | None = None  # default slice budget per image (default: the model's; mtmd families <= 9)
    max_pixels: int | None = None  # default pixel budget per image: downscaled above it (image_budget.py)
    image_max_pixels: int = MediaLimits.max_pixels
    use_mmap: bool = True
    # the vision encoder (encoder_choice.py): "mtmd" (llama.cpp), "onnx" (an export-vision folder,
    # `vision_onnx`, run by ONNX Runtime in `onnx_precision` fp32/fp16/int8), an encoder object
    # (external_encoder.py's protocol: n_chunks(rgb), slices(rgb), encode(pixels), check(...)), or
    # "auto"/None: this platform's measured default
    vision_encoder: object | None = None
    mmproj_type: str | None = None  # projector storage for llama.cpp's encoder: f16, q8_0, ... (None: default)
    vision_onnx: str | None = None
    onnx_precision: str = "fp32"
    vision_flash_attn: int = -1  # flash attention in mtmd's vision graph: -1 auto, 0 off, 1 on
    # persistent image-embedding cache (embedding_store.py): a folder, and its size cap in MiB
    image_cache_dir: str | None = None
    image_cache_mb: int = 1024


def merge_options(opts: LoadOptions, overrides: dict) -> LoadOptions:
    if not overrides:
        return opts
    unknown = set(overrides) - set(LoadOptions.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown load option(s): {sorted(unknown)}")
    return replace(opts, **overrides)
