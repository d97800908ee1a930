"""Vision projector (mmproj, arch `clip`) -> a smaller mmproj, tensor by tensor, in numpy.

llama-quantize would also take an mmproj (arch `clip` is "dummy, only used by
llama-quantize", llama-arch.cpp:9), but its K-quant fallbacks and BF16 output
are what we must avoid on phones. Here the rules are ours and explicit:

* never BF16 (phones without BF16 run a BF16 projector ~5x slower; ecosystem.md);
* the patch embedding stays F16 (F32 in an F32 file): ggml's conv kernel wants
  it so, and llama-quantize skips it too (llama-quant.cpp:370,375);
* position embeddings, norms, 1-D tensors and anything not named `*.weight`
  (resampler.query, resampler.pos_embed_k) keep their stored type (F32), as
  llama.cpp's converters write them (base.py:1084-1119);
* a block type is used only where the row length is a multiple of its block
  size; other rows (SigLIP's 4304-wide FFN, 172 in our fixtures) stay F16.

gguf's numpy quantizers are bit-exact with ggml's reference code (Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1), so the output equals llama.cpp's for the tensors it covers.
Writing goes through convert.writer: streaming, temp name + rename, and a
clear error with no partial file on a full disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from minicpmv_edge.convert.writer import PlannedTensor, write_gguf
from minicpmv_edge.errors import GGUFError, InputError

log = logging.getLogger(__name__)

TYPES: dict[str, Q] = {"F32": Q.F32, "F16": Q.F16, "Q8_0": Q.Q8_0, "Q5_1": Q.Q5_1, "Q5_0": Q.Q5_0,
                       "Q4_1": Q.Q4_1, "Q4_0": Q.Q4_0}
FILE_TYPE = {Q.F32: 0, Q.F16: 1, Q.Q4_0: 2, Q.Q4_1: 3, Q.Q8_0: 7, Q.Q5_0: 8, Q.Q5_1: 9}  # llama_ftype
_SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type")


@dataclass
class MmprojResult:
    path: Path
    type: str
    bytes: int
    seconds: float
    types: dict[str, int]  # storage type -> tensor count


def parse_type(name: str) -> Q:
    key = name.upper()
    if key == "BF16":
        raise InputError("the vision projector is never written as BF16 (phones without BF16 run it ~5x "
                         "slower); use F16 (default) or Q8_0")
    if key not in TYPES:
        raise InputError(f"mmproj type {name!r} is not supported; choose one of {', '.join(TYPES)} "
                         "(K-quants and IQ types hurt the vision tower and are not offered)")
    return TYPES[key]


def tensor_type(name: str, shape: tuple[int, ...], stored: Q, target: Q) -> Q:
    """The storage type one projector tensor gets (shape in numpy order)."""
    if (len(shape) < 2 or not name.endswith(".weight") or "norm" in name or ".ln" in name
            or "position_embd" in name):
        return stored if stored in (Q.F32, Q.F16) else Q.F32  # biases, norms, pos tables: as llama.cpp wrote them
    if "patch_embd" in name:
        return Q.F32 if target == Q.F32 else Q.F16
    if target in (Q.F32, Q.F16):
        return target
    block = GGML_QUANT_SIZES[target][0]
    return target if shape[-1] % block == 0 else Q.F16


def _copy_fields(reader: GGUFReader, w: GGUFWriter, file_type: int) -> None:
    for f in reader.fields.values():
        if f.name.startswith(_SKIP_KEYS):
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, f.contents(), vtype)
    w.add_uint32("general.file_type", file_type)


def is_mmproj(path: str | os.PathLike[str]) -> bool:
    from minicpmv_edge.gguf_info import read_info

    return read_info(path, tensors=False).is_mmproj


def quantize_mmproj(inp: str | os.PathLike[str], out: str | os.PathLike[str], qtype: str = "F16",
                    allow_requantize: bool = False) -> MmprojResult:
    t0 = time.perf_counter()
    inp, out = Path(inp), Path(out)
    target = parse_type(qtype)
    from minicpmv_edge.gguf_info import read_info

    info = read_info(inp)  # clear errors for a missing / non-GGUF file
    if not info.is_mmproj:
        raise InputError(f"not a vision projector (general.architecture is {info.arch!r}); "
                         "text models go through llama.cpp's quantizer", inp)
    if out.resolve() == inp.resolve():
        raise InputError("input and output are the same file", out)
    try:
        reader = GGUFReader(inp)
    except Exception as exc:  # noqa: BLE001 - gguf raises bare ValueError / struct errors
        raise GGUFError(f"cannot read GGUF ({exc})", inp) from None
    plan: list[PlannedTensor] = []
    for t in reader.tensors:
        stored = Q(t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne -> numpy order
        if stored not in (Q.F32, Q.F16, Q.BF16) and not allow_requantize:
            raise InputError(f"already quantized ({stored.name} tensor {t.name}); start from the F16 projector "
                             "or pass --allow-requantize", inp)
        qt = tensor_type(t.name, shape, stored, target)
        plan.append(PlannedTensor(t.name, shape, qt, _producer(t, stored, shape)))

    def meta(w: GGUFWriter) -> None:
        _copy_fields(reader, w, FILE_TYPE[target])

    from minicpmv_edge import progress
    from minicpmv_edge.convert.pipeline import planned_nbytes

    with progress.bar(sum(planned_nbytes(t) for t in plan), f"quantizing projector to {target.name}") as bar:
        size = write_gguf(out, "clip", meta, plan, lambda i, n, t: bar.update(planned_nbytes(t)))
    counts = Counter(t.qtype.name for t in plan)
    skipped = [t.name for t in plan if t.qtype == Q.F16 and target not in (Q.F16, Q.F32) and ".weight" in t.name
               and "patch_embd" not in t.name and len(t.shape) == 2]
    if skipped:
        log.info("kept %d tensors F16 (rows not a multiple of the %s block), e.g. %s", len(skipped), target.name,
                 skipped[0])
    return MmprojResult(out, target.name, size, time.perf_counter() - t0, dict(counts))


def _producer(t, stored: Q, shape: tuple[int, ...]):
    def produce() -> np.ndarray:
        if stored in (Q.F32, Q.F16):
            return np.asarray(t.data, dtype=np.float32).reshape(shape)
        return dequantize(np.asarray(t.data), stored).reshape(shape).astype(np.float32)

    return produce
