"""Lazy, mmap-backed reader for (sharded) safetensors checkpoints, no torch.

Why by hand: the `safetensors` package's numpy API cannot return bfloat16 and
loads a whole file per call; here every tensor is a zero-copy view into an mmap,
materialised (and upcast) only when the writer asks for it, so peak memory is
about one tensor, not one model.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from minicpmv_edge.errors import CheckpointError

# safetensors dtype tag -> (numpy storage dtype, bytes per element)
_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # upcast by bit shift in `load`
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("u1"), 1),
}

_MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exact."""
    return np.left_shift(raw, 16, dtype=np.uint32).view(np.float32)  # one allocation, not two


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives; `shape` and `dtype` are known without reading data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors tag: F32, F16, BF16, I32, ...
    file: Path
    start: int  # absolute byte offsets in `file`
    end: int


class _Shard:
    def __init__(self, path: Path):
        self.path = path
        try:
            self._fh = open(path, "rb")
        except FileNotFoundError:
            raise CheckpointError("shard is missing", path) from None
        except OSError as exc:
            raise CheckpointError(f"cannot open shard ({exc.strerror})", path) from None
        size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(8)
        if len(head) < 8:
            raise CheckpointError("not a safetensors file (shorter than its 8-byte header length)", path)
        (hlen,) = struct.unpack("<Q", head)
        if hlen > _MAX_HEADER or 8 + hlen > size:
            raise CheckpointError("not a safetensors file or truncated (header length out of range)", path)
        try:
            header = json.loads(self._fh.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError("corrupt safetensors header (not JSON)", path) from None
        base = 8 + hlen
        self.refs: dict[str, TensorRef] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info.get("dtype")
            if dtype not in _DTYPES:
                raise CheckpointError(f"tensor {name!r} has unsupported dtype {dtype!r}", path)
            shape = tuple(int(d) for d in info["shape"])
            start, end = (base + int(o) for o in info["data_offsets"])
            n = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if end - start != n * _DTYPES[dtype][1]:
                raise CheckpointError(f"tensor {name!r}: byte range does not match shape {list(shape)}", path)
            if end > size:
                raise CheckpointError(
                    f"truncated: tensor {name!r} ends at byte {end} but the file has {size} bytes", path
                )
            self.refs[name] = TensorRef(name, shape, dtype, path, start, end)
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def view(self, ref: TensorRef) -> np.ndarray:
        np_dtype, _ = _DTYPES[ref.dtype]
        assert self._mm is not None
        arr = np.frombuffer(self._mm, dtype=np_dtype, count=(ref.end - ref.start) // np_dtype.itemsize, offset=ref.start)
        return arr.reshape(ref.shape)

    def close(self) -> None:
        # Views handed out may still reference the map; let GC close it then.
        self._fh.close()


class Checkpoint:
    """All tensors of a checkpoint directory, by name, across shards."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        self._shards: dict[Path, _Shard] = {}
        self.refs: dict[str, TensorRef] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError("corrupt index: expected JSON with a 'weight_map' object", index) from None
            files = sorted(set(weight_map.values()))
            for f in files:
                self._open(self.dir / f)
            for name, f in weight_map.items():
                shard = self._shards[self.dir / f]
                if name not in shard.refs:
                    raise CheckpointError(f"index lists tensor {name!r} but the shard does not contain it", shard.path)
                self.refs[name] = shard.refs[name]
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise CheckpointError("no *.safetensors files and no model.safetensors.index.json", self.dir)
            for f in files:
                shard = self._open(f)
                for name, ref in shard.refs.items():
                    if name in self.refs:
                        raise CheckpointError(f"tensor {name!r} appears in two files", f)
                    self.refs[name] = ref

    def _open(self, path: Path) -> _Shard:
        if path not in self._shards:
            self._shards[path] = _Shard(path)
        return self._shards[path]

    def __contains__(self, name: str) -> bool:
        return name in self.refs

    def __iter__(self) -> Iterator[str]:
        return iter(self.refs)

    def names(self) -> list[str]:
        return list(self.refs)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.refs[name].shape

    def raw(self, name: str) -> np.ndarray:
        """Zero-copy view in storage dtype (bf16 appears as uint16)."""
        ref = self.refs[name]
        return self._shards[ref.file].view(ref)

    def load(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Materialise one tensor as `dtype` (floats upcast exactly from bf16/f16)."""
        ref = self.refs[name]
        raw = self.raw(name)
        if ref.dtype == "BF16":
            raw = bf16_to_f32(raw)
        return np.asarray(raw, dtype=dtype)

    def total_bytes(self) -> int:
        return sum(r.end - r.start for r in self.refs.values())

    def close(self) -> None:
        for s in self._shards.values():
            s.close()
