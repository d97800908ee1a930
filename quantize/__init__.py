"""Quantization: llama.cpp's quantizer for text GGUFs, numpy block types for the
vision projector, lossless int4 (GPTQ/AWQ) repacking, and quality reports.

`quantize_file` picks the right path from the GGUF's architecture.
"""

from __future__ import annotations

import os


def quantize_file(inp: str | os.PathLike[str], out: str | os.PathLike[str], qtype: str, **kw):
    """Quantize a text GGUF (llama.cpp) or an mmproj (numpy, arch `clip`); returns the result."""
    from minicpmv_edge.gguf_info import read_info

    if read_info(inp, tensors=False).is_mmproj:
        from minicpmv_edge.errors import InputError

        from .mmproj import quantize_mmproj

        extra = [k for k in ("imatrix", "output_tensor_type", "token_embedding_type") if kw.get(k)]
        if extra:
            raise InputError(f"--{extra[0].replace('_', '-')} applies to text models, not to a vision projector",
                             inp)
        return quantize_mmproj(inp, out, qtype, allow_requantize=bool(kw.get("allow_requantize")))
    from .llama import quantize_text

    return quantize_text(inp, out, qtype, **kw)
