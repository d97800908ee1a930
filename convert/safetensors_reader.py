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


def _entry(name: str, info, path: Path) -> tuple[int, int, tuple[int, ...], str]:
    """One header entry -> (start, end, shape, dtype), each field type- and range-checked."""
    if not isinstance(info, dict):
        raise CheckpointError(f"tensor {name!r}: header entry is a {type(info).__name__}, expected an object", path)
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"tensor {name!r} has unsupported dtype {dtype!r:.40}", path)
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r:.80}",
                              path)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise CheckpointError(f"tensor {name!r}: data_offsets must be [begin, end] with non-negative integers, "
                              f"got {offsets!r:.80}", path)
    start, end = offsets
    n = 1
    for d in shape:
        n *= d
    if end < start or end - start != n * _DTYPES[dtype][1]:
        raise CheckpointError(f"tensor {name!r}: byte range {start}..{end} does not match shape {shape} "
                              f"of {dtype}", path)
    return start, end, tuple(shape), dtype


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62


class _Shard:
    def __init__(self, path: Path):
        self.path = path
        if path.exists() and not path.is_file():  # a FIFO would block open(), a device never ends
            raise CheckpointError("is not a regular file", path)
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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise CheckpointError("corrupt safetensors header (not JSON)", path) from None
        if not isinstance(header, dict):
            raise CheckpointError(f"corrupt safetensors header: a JSON {type(header).__name__}, expected an object",
                                  path)
        base = 8 + hlen
        self.refs: dict[str, TensorRef] = {}
        for name, info in header.items():
            if name == "__metadata__":
                if not isinstance(info, dict):
                    raise CheckpointError("corrupt safetensors header: __metadata__ is not an object", path)
                continue
            start, end, shape, dtype = _entry(name, info, path)
            start, end = base + start, base + end
            if end > size:
                raise CheckpointError(
                    f"truncated: tensor {name!r} ends at byte {end} but the file has {size} bytes", path
                )
            self.refs[name] = TensorRef(name, shape, dtype, path, start, end)
        # tensors must not share bytes: the safetensors format forbids it, and a converter reading
        # overlapping ranges would write one tensor's bytes as another's without noticing
        spans = sorted((r.start, r.end, r.name) for r in self.refs.values() if r.end > r.start)
        for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise CheckpointError(f"tensors {n0!r} and {n1!r} overlap in the file", path)
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def view(self, ref: TensorRef) -> np.ndarray:
        np_dtype, _ = _DTYPES[ref.dtype]
        assert self._mm is not None
        arr = np.frombuffer(self._mm, dtype=np_dtype, count=(ref.end - ref.start) // np_dtype.itemsize, offset=ref.start)
        return arr.reshape(ref.shape)

    def close(self) -> None:
        # Views handed out may still reference the map; let GC close it then.
        self._fh.close()


def _read_index(index: Path) -> dict[str, str]:
    """model.safetensors.index.json's weight_map, checked: names and file names are strings,
    and every file is a plain name inside the checkpoint folder (no paths out of it)."""
    try:
        data = json.loads(index.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError("corrupt index: not UTF-8 text", index) from None
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError("corrupt index: not JSON", index) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror})", index) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("corrupt index: expected a JSON object with a non-empty 'weight_map' object", index)
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file:
            raise CheckpointError(f"corrupt index: weight_map[{name!r}] must be a file name, got {file!r:.80}", index)
        if Path(file).name != file or file in (".", ".."):
            raise CheckpointError(f"corrupt index: weight_map[{name!r}] = {file!r} is not a file in this folder",
                                  index)
    return weight_map


class Checkpoint:
    """All tensors of a checkpoint directory, by name, across shards."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        self._shards: dict[Path, _Shard] = {}
        self.refs: dict[str, TensorRef] = {}
        if index.exists():
            weight_map = _read_index(index)
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
