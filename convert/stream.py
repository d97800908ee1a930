"""Stream an untransformed checkpoint tensor into a GGUF file in row blocks.

The generic path (`produce()` -> float32 -> target type) materialises every tensor
as float32 (a 151748 x 4096 embedding is 2.5 GB, plus temporaries) and reads it
through the mmap, whose touched pages then count in the process's RSS until
the checkpoint is closed. For tensors whose producer is exactly
`ckpt.load(source)`, this reads the stored bytes with pread into one reused
buffer, converts a block of rows at a time (bf16 -> f16 with integer ops, bf16
-> bf16 copied) and writes it: memory stays at a few block buffers, output
bytes are identical to the generic path.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from .safetensors_reader import TensorRef

Q = GGMLQuantizationType
BLOCK_BYTES = 512 << 10  # source bytes per read: small enough for the temporaries to stay in L2
_STORAGE = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}


def streamable(ref: TensorRef | None, qtype: Q) -> bool:
    return (ref is not None and ref.dtype in _STORAGE and len(ref.shape) >= 1
            and qtype in (Q.F16, Q.F32, Q.BF16, Q.Q8_0))


def bf16_to_f16_bits(b: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> f16 bits, identical to float32(b).astype(float16).

    Where the exponent is in f16's normal range the 7 mantissa bits fit exactly,
    so only the exponent is rebiased (127 -> 15), in wrapping uint16 arithmetic;
    the rare other lanes (zero, f16 subnormals, overflow, inf/nan; ~0.3% of
    typical weights) take numpy's own cast."""
    np.left_shift(b, 3, out=out)          # sign and the exponent's top bits fall off
    np.subtract(out, 0xC000, out=out)     # - (112 << 10) mod 2**16
    np.bitwise_and(out, 0x7FFF, out=out)
    np.bitwise_and(b, 0x8000, out=tmp)
    np.bitwise_or(out, tmp, out=out)
    np.bitwise_and(b, 0x7F80, out=tmp)
    np.subtract(tmp, 113 << 7, out=tmp)   # exponent 113..142 -> 0..29 << 7, others wrap high
    bad = np.flatnonzero(tmp > (29 << 7))
    if bad.size:
        with np.errstate(over="ignore"):
            out[bad] = (b[bad].astype(np.uint32) << 16).view(np.float32).astype(np.float16).view(np.uint16)
    return out


class SourceStream:
    """What GGUFWriter.write_tensor_data needs (nbytes, tofile) for one streamed tensor."""

    def __init__(self, ref: TensorRef, qtype: Q, nbytes: int, fds: dict):
        self.ref, self.qtype, self.nbytes, self._fds = ref, qtype, nbytes, fds

    def _fd(self) -> int:
        fd = self._fds.get(self.ref.file)
        if fd is None:
            fd = self._fds[self.ref.file] = os.open(self.ref.file, os.O_RDONLY)
        return fd

    def tofile(self, fout) -> None:
        """Blocks are read and converted by a small thread pool (pread and numpy's ufuncs
        release the GIL) while this thread writes them in order: on 2 cores that nearly
        halves the wall time of a CPU-bound conversion; a few blocks are in flight."""
        ref = self.ref
        st = _STORAGE[ref.dtype]
        row = int(np.prod(ref.shape[1:], dtype=np.int64)) if len(ref.shape) > 1 else 1
        rows_per = max(1, BLOCK_BYTES // (row * st.itemsize))
        fd = self._fd()
        pool, depth = _pool()
        pending: deque = deque()
        try:
            for a in range(0, ref.shape[0], rows_per):
                pending.append(pool.submit(self._block, fd, a, min(rows_per, ref.shape[0] - a), row, st))
                if len(pending) >= depth:
                    fout.write(pending.popleft().result().data)
            while pending:
                fout.write(pending.popleft().result().data)
        finally:
            for f in pending:
                f.cancel()

    def _block(self, fd: int, a: int, n_rows: int, row: int, st: np.dtype) -> np.ndarray:
        ref, qt, shape = self.ref, self.qtype, self.ref.shape
        n = n_rows * row
        src = np.empty(n, st)
        raw_bytes = src.view(np.uint8)
        want, off, got = n * st.itemsize, ref.start + a * row * st.itemsize, 0
        while got < want:
            k = os.preadv(fd, [raw_bytes[got:want]], off + got)
            if k <= 0:
                raise OSError(f"{ref.file}: unexpected end of file")
            got += k
        if ref.dtype == "BF16" and qt == Q.F16:
            return bf16_to_f16_bits(src, np.empty(n, np.uint16), np.empty(n, np.uint16))
        if ref.dtype == "BF16" and qt == Q.BF16:
            # exact already; quiet NaNs as gguf's f32 -> bf16 rounding does
            return np.where((src & 0x7FFF) > 0x7F80, src | 0x0040, src).astype(np.uint16)
        if ref.dtype == "BF16" and qt == Q.F32:
            return np.left_shift(src, 16, dtype=np.uint32)
        if ref.dtype == "BF16":  # Q8_0
            f32 = np.left_shift(src, 16, dtype=np.uint32).view(np.float32).reshape(-1, *shape[1:])
            return np.ascontiguousarray(quantize(f32, qt))
        if qt in (Q.F16, Q.F32):
            return np.ascontiguousarray(src.astype(np.float16 if qt == Q.F16 else np.float32, copy=False))
        return np.ascontiguousarray(quantize(src.astype(np.float32).reshape(-1, *shape[1:]), qt))


_POOL: tuple[ThreadPoolExecutor, int] | None = None


def set_workers(n: int | None) -> None:
    """Threads that convert source blocks (convert -t); None: min(4, cores)."""
    global _POOL
    workers = max(1, int(n)) if n else max(1, min(4, os.cpu_count() or 1))
    if _POOL is not None and _POOL[0]._max_workers == workers:
        return
    if _POOL is not None:
        _POOL[0].shutdown(wait=True)
    _POOL = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert"), 2 * workers)


def _pool() -> tuple[ThreadPoolExecutor, int]:
    if _POOL is None:
        set_workers(None)
    return _POOL


def close_fds(fds: dict) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()
