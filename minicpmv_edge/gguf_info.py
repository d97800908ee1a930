"""Fast GGUF header reading, file descriptions, and the text/mmproj pairing check.

Why not gguf.GGUFReader: it materialises every array element (150k vocabulary
strings) as a numpy view, which costs seconds per load; the runtimes call
`check_pair` before every load, so this reads scalars and short arrays and
skips the long ones by length.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import gguf_layout, model_facts, schema
from .errors import GGUFError, MismatchError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
TYPE_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
              8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}
_MAX_KEEP_ARRAY = 4096


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (ne0 first)
    ggml_type: int
    offset: int = 0  # within the data section


@dataclass
class GGUFInfo:
    path: Path
    version: int
    kv: dict[str, Any] = field(default_factory=dict)
    kv_types: dict[str, int] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    array_types: dict[str, int] = field(default_factory=dict)  # element type of each array key
    tensors: list[TensorInfo] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.kv.get(key, default)

    @property
    def arch(self) -> str:
        return self.kv.get("general.architecture", "?")

    @property
    def is_mmproj(self) -> bool:
        return self.arch == "clip"

    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    buf = f.read(size)
    if len(buf) != size:
        raise EOFError
    return struct.unpack(fmt, buf)[0]


def _str(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    if n > 1 << 30:
        raise ValueError("string length out of range")
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int, keep: bool = True) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _str(f)
    raise ValueError(f"bad value type {vtype}")


def read_info(path: str | os.PathLike[str], tensors: bool = True) -> GGUFInfo:
    """Read a GGUF header. Raises GGUFError naming the file on anything malformed."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block open(), /dev/zero never ends
        raise GGUFError("is not a regular file (a device, FIFO or socket), expected a .gguf file", path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if not magic:
                raise GGUFError("is empty, not a GGUF file", path)
            if magic != GGUF_MAGIC:
                raise GGUFError("not a GGUF file (bad magic)", path)
            info = GGUFInfo(path, _read(f, "<I"))
            if info.version not in gguf_layout.SUPPORTED_VERSIONS:
                gguf_layout.check_header(info, None, path)
            n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
            if n_tensors > 1 << 24 or n_kv > 1 << 24:
                raise GGUFError("corrupt GGUF header (counts out of range)", path)
            for _ in range(n_kv):
                key, vtype = _str(f), _read(f, "<I")
                if not key or key in info.kv_types:
                    raise GGUFError(f"empty or duplicate metadata key {key!r}", path)
                info.kv_types[key] = vtype
                if vtype == _ARRAY:
                    sub, n = _read(f, "<I"), _read(f, "<Q")
                    info.array_lengths[key] = n
                    info.array_types[key] = sub
                    if sub in _SCALARS and n > _MAX_KEEP_ARRAY:
                        f.seek(n * struct.calcsize(_SCALARS[sub]), os.SEEK_CUR)
                    elif sub == _STRING and n > _MAX_KEEP_ARRAY:
                        for _ in range(n):
                            f.seek(_read(f, "<Q"), os.SEEK_CUR)
                    else:
                        info.kv[key] = [_value(f, sub) for _ in range(n)]
                else:
                    info.kv[key] = _value(f, vtype)
            alignment = gguf_layout.check_header(info, info.kv_types.get("general.alignment"), path)
            if tensors:
                for _ in range(n_tensors):
                    name = _str(f)
                    nd = _read(f, "<I")
                    if nd > gguf_layout.MAX_DIMS:
                        raise GGUFError(f"tensor {name[:80]!r} has {nd} dimensions; llama.cpp allows "
                                        f"{gguf_layout.MAX_DIMS}", path)
                    shape = tuple(_read(f, "<Q") for _ in range(nd))
                    ttype = _read(f, "<I")
                    info.tensors.append(TensorInfo(name, shape, ttype, _read(f, "<Q")))
                data_start = -(-f.tell() // alignment) * alignment if n_tensors else f.tell()
                gguf_layout.check_tensors(info.tensors, data_start, alignment, os.fstat(f.fileno()).st_size, path)
            return info
    except FileNotFoundError:
        raise GGUFError("file does not exist", path) from None
    except IsADirectoryError:
        raise GGUFError("is a directory, expected a .gguf file", path) from None
    except PermissionError:
        raise GGUFError("cannot read the file (permission denied)", path) from None
    except OSError as exc:
        raise GGUFError(f"cannot read the file ({exc.strerror or exc})", path) from None
    except (EOFError, ValueError, struct.error, OverflowError):
        raise GGUFError("truncated or corrupt GGUF header", path) from None


def mmproj_out_dim(mm: GGUFInfo) -> int | None:
    """Projector output width, as clip.cpp computes it (clip.cpp:5982-5985)."""
    ptype = mm.get(schema.CLIP_PROJECTOR_TYPE)
    if ptype == schema.PROJECTOR_RESAMPLER and (t := mm.tensor(schema.TN_RESAMPLER_PROJ)):
        return t.shape[0]
    if ptype == schema.PROJECTOR_MINICPMV4_6 and (t := mm.tensor("mm.down.weight")):
        return t.shape[1]
    return mm.get(schema.CLIP_PROJECTION_DIM)


def facts_of(text: GGUFInfo, mm: GGUFInfo | None = None) -> tuple[model_facts.ModelFacts, bool]:
    """The one detection, for `inspect` and the runtimes: our minicpmv_edge.* keys when the file
    has them, else the family recognised from llama.cpp's standard keys (model_facts.detect).
    Returns (facts, whether the file carries our keys)."""
    n_vocab = text.array_lengths.get("tokenizer.ggml.tokens")
    try:
        return model_facts.from_gguf(text.kv, n_vocab, mm.kv if mm is not None else None)
    except UnsupportedModelError as exc:
        raise GGUFError(exc.problem, text.path) from None


def family_label(text: GGUFInfo, mm: GGUFInfo | None = None) -> str:
    """`minicpmv-4.6 (minicpmv_edge.* keys)` / `... (detected from standard keys)` / why not."""
    try:
        facts, ours = facts_of(text, mm)
    except GGUFError as exc:
        return f"unknown ({exc.problem})"
    return f"{facts.family} ({'minicpmv_edge.* keys' if ours else 'detected from standard keys'})"


def _expected_projector(text: GGUFInfo) -> tuple[str | None, int]:
    """The projector type/version the text model needs: from our keys, else from its family."""
    if schema.EDGE_PROJECTOR_TYPE in text.kv:
        return text.get(schema.EDGE_PROJECTOR_TYPE), int(text.get(schema.EDGE_PROJECTOR_VERSION) or 0)
    try:
        f = model_facts.detect(text.kv, text.array_lengths.get("tokenizer.ggml.tokens"))
    except UnsupportedModelError:
        return None, 0
    return f.projector_type, f.projector_version


def pair_problems(text: GGUFInfo, mm: GGUFInfo) -> list[str]:
    """Everything that makes `mm` unusable with `text`, in words; empty when they fit."""
    problems: list[str] = []
    if text.is_mmproj:
        problems.append(f"{text.path.name} is a vision projector, expected the text model")
    if not mm.is_mmproj:
        problems.append(f"{mm.path.name} is a {mm.arch!r} model, expected a vision projector (architecture 'clip')")
        return problems
    arch = text.arch
    n_embd = text.get(f"{arch}.embedding_length")
    out = mmproj_out_dim(mm)
    if n_embd is not None and out is not None and int(out) != int(n_embd):
        problems.append(f"projector output width {out} != text embedding width {n_embd}")
    ptype = mm.get(schema.CLIP_PROJECTOR_TYPE)
    if ptype not in (schema.PROJECTOR_RESAMPLER, schema.PROJECTOR_MINICPMV4_6):
        problems.append(f"projector type {ptype!r} is not a MiniCPM-V projector")
    version = mm.get(schema.CLIP_MINICPMV_VERSION_I32)
    if ptype == schema.PROJECTOR_RESAMPLER:
        if mm.kv_types.get(schema.CLIP_MINICPMV_VERSION_I32) not in (None, 5):  # 5 = INT32
            problems.append("clip.minicpmv_version is not INT32 (llama.cpp would abort)")
        if version not in (3, 4, 5, 6, 100045):
            problems.append(f"clip.minicpmv_version {version!r} is not supported by llama.cpp's mtmd")
    if ptype == schema.PROJECTOR_MINICPMV4_6:
        if mm.kv_types.get(schema.CLIP_SCALE_FACTOR_U32) != 4:  # 4 = UINT32
            problems.append("clip.vision.projector.scale_factor is missing or not UINT32 (llama.cpp would abort)")
        if mm.array_types.get(schema.CLIP_WA_LAYER_INDEXES_I32) != 5:  # INT32 array
            problems.append("clip.vision.wa_layer_indexes is missing or not an INT32 array (llama.cpp would abort)")
    want_type, want_version = _expected_projector(text)
    if want_type is not None and ptype != want_type:
        problems.append(f"text model expects a {want_type!r} projector, got {ptype!r}")
    if want_version and version is not None and int(version) != int(want_version):
        problems.append(f"text model expects projector version {want_version}, got {version}")
    tf, mf = text.get(schema.EDGE_FAMILY), mm.get(schema.EDGE_FAMILY)
    if tf and mf and tf != mf:
        problems.append(f"families differ: text {tf!r}, projector {mf!r}")
    if arch == "qwen35" and ptype == schema.PROJECTOR_RESAMPLER:
        problems.append("a qwen35 (MiniCPM-V 4.6) text model needs a minicpmv4_6 projector")
    return problems


def check_pair(text_path: str | os.PathLike[str], mmproj_path: str | os.PathLike[str]) -> tuple[GGUFInfo, GGUFInfo]:
    text, mm = read_info(text_path), read_info(mmproj_path)
    problems = pair_problems(text, mm)
    if problems:
        raise MismatchError("does not fit the text model: " + "; ".join(problems), mmproj_path)
    return text, mm
