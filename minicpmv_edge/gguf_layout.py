"""The structural rules llama.cpp's GGUF reader enforces, checked in Python first.

`read_info` (gguf_info.py) calls `check_header` and `check_tensors`, so `inspect`, the
runtime, `quantize` and the C bridge's callers refuse exactly the files llama.cpp would
(ggml/src/gguf.cpp gguf_init_from_file_impl, and llama-model-loader.cpp's "tensor data is
not within the file bounds"), with one line naming the file and the rule, instead of
`inspect` saying OK to a file the runtime then rejects (or, for a few type errors,
llama.cpp aborting the process).
"""

from __future__ import annotations

from minicpmv_edge.errors import GGUFError

SUPPORTED_VERSIONS = (2, 3)  # gguf.cpp:510-518: v1 is refused, newer than GGUF_VERSION (3) too
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: names must be shorter
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
TYPE_COUNT = 43  # GGML_TYPE_COUNT at llama.cpp 0c1e570 (ggml.h:433)
UINT32 = 4


def _block_sizes() -> dict[int, tuple[int, int]]:
    """ggml type -> (elements per block, bytes per block), from gguf plus what the PyPI wheel lacks."""
    from gguf.constants import GGML_QUANT_SIZES

    sizes = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
    sizes.setdefault(42, (64, 18))  # GGML_TYPE_Q2_0: ggml-common.h block_q2_0 (QK2_0 = 64, f16 + 16 bytes)
    return sizes


_SIZES: dict[int, tuple[int, int]] | None = None


def check_header(info, alignment_type: int | None, path) -> int:
    """Version and alignment rules; returns the alignment."""
    if info.version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"GGUF version {info.version} is not supported by llama.cpp (it reads versions 2 and 3)",
                        path)
    if alignment_type is None:
        return DEFAULT_ALIGNMENT
    align = info.kv.get("general.alignment")
    if alignment_type != UINT32:
        raise GGUFError("general.alignment must be a UINT32", path)
    if not align or align & (align - 1):
        raise GGUFError(f"general.alignment {align} is not a power of 2", path)
    return int(align)


def nbytes(shape: tuple[int, ...], ggml_type: int, name: str, path) -> int:
    global _SIZES
    if _SIZES is None:
        _SIZES = _block_sizes()
    if not 0 <= ggml_type < TYPE_COUNT or ggml_type not in _SIZES:
        raise GGUFError(f"tensor {name!r} has an invalid ggml type {ggml_type}", path)
    block, size = _SIZES[ggml_type]
    ne0 = shape[0] if shape else 1
    if ne0 % block:
        raise GGUFError(f"tensor {name!r}: {ne0} elements per row is not a multiple of its type's block "
                        f"size {block}", path)
    n = 1
    for d in shape:
        n *= d
    if n >= 1 << 63:
        raise GGUFError(f"tensor {name!r}: shape {list(shape)} overflows", path)
    return n // block * size


def check_tensors(tensors, data_start: int, alignment: int, file_size: int, path) -> None:
    """Names, dimensions, types, and the data layout: offsets consecutive (padded to the
    alignment, gguf.cpp:789-818) and every tensor's bytes inside the file."""
    seen: set[str] = set()
    expected = 0
    for t in tensors:
        if not t.name or len(t.name.encode()) >= MAX_NAME:
            raise GGUFError(f"tensor name {t.name[:80]!r} is empty or longer than {MAX_NAME - 1} bytes", path)
        if t.name in seen:
            raise GGUFError(f"duplicate tensor name {t.name!r}", path)
        seen.add(t.name)
        if len(t.shape) > MAX_DIMS:
            raise GGUFError(f"tensor {t.name!r} has {len(t.shape)} dimensions; llama.cpp allows {MAX_DIMS}", path)
        size = nbytes(t.shape, t.ggml_type, t.name, path)
        if t.offset != expected:
            raise GGUFError(f"tensor {t.name!r} has data offset {t.offset}, expected {expected} "
                            "(offsets must follow each other)", path)
        end = data_start + t.offset + size
        if end > file_size:
            raise GGUFError(f"truncated: tensor {t.name!r} ends at byte {end} but the file has {file_size} bytes",
                            path)
        expected += -(-size // alignment) * alignment
