"""Streaming GGUF writer: plan every tensor first, then write one at a time.

gguf's GGUFWriter keeps every `add_tensor` array in memory until the end; we use
its lower-level state machine instead (tensor infos first, data later), so at
most one materialised tensor is alive. Output goes to a temporary name in the
destination directory and is renamed only when complete: an interrupted or
failed run never leaves a `.gguf` under its final name.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize, quant_shape_to_byte_shape

from minicpmv_edge.errors import Interrupted, OutputError

from .stream import SourceStream, close_fds, streamable

log = logging.getLogger(__name__)

Q = GGMLQuantizationType


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its GGUF name, numpy-order shape, storage type and a producer.

    `produce` returns a float array of exactly `shape`; it is called once, while
    writing, so the source is read only then. With `encoded`, it returns the
    finished `qtype` bytes instead (uint8, gguf's byte shape), e.g. an int4
    checkpoint's weights repacked into Q4_0 blocks by quantize.int4.
    `source` names the checkpoint tensor when `produce` is exactly
    `ckpt.load(source)` (no transform), so a later stage may substitute an exact
    encoding of that source; None otherwise.
    """

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    produce: Callable[[], np.ndarray]
    source: str | None = None
    encoded: bool = False


def _encode(arr: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(arr, dtype=np.float16)
    # BF16 / Q8_0: gguf's numpy quantizers (bit-exact with ggml's reference code)
    return quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype)


def _info_args(t: PlannedTensor) -> tuple[Sequence[int], np.dtype, int, GGMLQuantizationType | None]:
    n = int(np.prod(t.shape, dtype=np.int64))
    if t.qtype == Q.F32:
        return t.shape, np.dtype(np.float32), 4 * n, None
    if t.qtype == Q.F16:
        return t.shape, np.dtype(np.float16), 2 * n, None
    byte_shape = quant_shape_to_byte_shape(t.shape, t.qtype)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape, dtype=np.int64)), t.qtype


def write_gguf(
    path: Path,
    arch: str,
    add_metadata: Callable[[GGUFWriter], None],
    tensors: Sequence[PlannedTensor],
    on_tensor: Callable[[int, int, PlannedTensor], None] | None = None,
    ckpt=None,
) -> int:
    """Write a complete GGUF atomically; returns the file size in bytes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError("output directory does not exist", path.parent)
    if not os.access(path.parent, os.W_OK):
        raise OutputError("output directory is not writable", path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = GGUFWriter(tmp, arch)
    fds: dict = {}
    try:
        add_metadata(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, *_info_args(t))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(tensors):
            ref = ckpt.refs.get(t.source) if (ckpt is not None and t.source and not t.encoded) else None
            if streamable(ref, t.qtype) and tuple(ref.shape) == tuple(t.shape):
                writer.write_tensor_data(SourceStream(ref, t.qtype, _info_args(t)[2], fds))
            else:
                arr = t.produce()
                want = quant_shape_to_byte_shape(t.shape, t.qtype) if t.encoded else t.shape
                if tuple(arr.shape) != tuple(want):
                    raise AssertionError(f"{t.name}: produced shape {arr.shape}, planned {want}")
                writer.write_tensor_data(np.ascontiguousarray(arr, np.uint8) if t.encoded else _encode(arr, t.qtype))
                del arr
            if on_tensor:
                on_tensor(i, len(tensors), t)
        writer.close()
        os.replace(tmp, path)
        return path.stat().st_size
    except KeyboardInterrupt:
        raise Interrupted("interrupted; no partial output was kept", path) from None
    except OSError as exc:
        # numpy's tofile reports a short write as a bare OSError("N requested and M written")
        short_write = exc.errno is None and "requested" in str(exc) and "written" in str(exc)
        if short_write or exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OutputError("disk full (or file size limit) while writing; no partial output was kept",
                              path) from None
        raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None
    finally:
        close_fds(fds)
        writer.close()
        if tmp.exists():
            tmp.unlink()
