"""Which storage type each output tensor gets.

The rules mirror what llama.cpp's own converters write and what its loaders and
quantizer expect (../shared/reference/llama-cpp-minicpmv.md, "Which tensors stay
F32"): 1-D tensors, norms, position embeddings and anything not named
`*.weight` stay F32 (base.py:1084-1119); the patch embedding is F16 (F32 only
for an f32 output) because ggml's conv kernel wants it so; block types need a
row length that is a multiple of their block size.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

from minicpmv_edge.errors import InputError

OUTTYPES: dict[str, Q] = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPE = {Q.F32: 0, Q.F16: 1, Q.Q8_0: 7, Q.BF16: 32}  # llama_ftype values (llama.h:118-161)


def parse_outtype(name: str) -> Q:
    try:
        return OUTTYPES[name.lower()]
    except KeyError:
        raise InputError(f"unknown --outtype {name!r}; choose one of {', '.join(OUTTYPES)}") from None


def _always_f32(name: str, ndim: int) -> bool:
    return (
        ndim <= 1
        or not name.endswith(".weight")
        or "norm" in name
        or ".ln" in name
        or "position_embd" in name
        or "ssm_conv1d" in name  # ggml's ssm_conv kernel reads F32 (llama.cpp's converter keeps it so)
    )


def text_tensor_type(name: str, shape: tuple[int, ...], outtype: Q) -> Q:
    if _always_f32(name, len(shape)):
        return Q.F32
    return _fit_block(outtype, shape)


def mmproj_tensor_type(name: str, shape: tuple[int, ...], outtype: Q) -> Q:
    """The projector is written F16 (F32 on request), never BF16: phones without
    BF16 run a BF16 projector about 5x slower (ecosystem.md, issue 14)."""
    if _always_f32(name, len(shape)):
        return Q.F32
    return Q.F32 if outtype == Q.F32 else Q.F16


def _fit_block(qtype: Q, shape: tuple[int, ...]) -> Q:
    block, _ = GGML_QUANT_SIZES[qtype]
    if block > 1 and shape[-1] % block:
        return Q.F16  # e.g. SigLIP's 4304-wide rows cannot be Q8_0
    return qtype
