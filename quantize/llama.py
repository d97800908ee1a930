"""Text GGUF -> quantized text GGUF through llama.cpp's own quantizer (`llama_model_quantize`).

llama.cpp aborts or throws on input it does not expect, so everything we can
check is checked first (`precheck`): the file is a GGUF, it is not an mmproj
(those go to quantize.mmproj), it is not already quantized (unless
--allow-requantize), the type exists and, for the very-low-bit types, an
importance matrix is given (llama-quant.cpp:856-875 `tensor_requires_imatrix`).
The output is written under a temporary name in the destination folder and
renamed only after llama.cpp reports success; llama.cpp's writer throws on a
failed write (llama-quant.cpp:1192, failbit), which we report as a full disk.

`--imatrix` takes llama.cpp's imatrix files, GGUF (`<tensor>.in_sum2` +
`<tensor>.counts`, F32) or the legacy .dat, and hands them over exactly as
tools/quantize/quantize.cpp does: per-tensor means (in_sum2 / counts per
expert; legacy: sums / ncall) in a NULL-terminated `llama_model_imatrix_data`
array, plus the `quantize.imatrix.*` metadata as kv overrides.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minicpmv_edge import progress
from minicpmv_edge.errors import InputError, OutputError, RuntimeFailure

from minicpmv_edge.gguf_info import GGUFInfo, read_info

log = logging.getLogger(__name__)

# name -> llama_ftype (include/llama.h:118-161): every type llama-quantize offers
# (tools/quantize/quantize.cpp:35-74 QUANT_OPTIONS), spelled as it spells them
FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "Q1_0": 40, "Q2_0": 41, "MXFP4_MOE": 38, "TQ1_0": 36, "TQ2_0": 37,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30,
    "IQ3_S": 26, "IQ3_M": 27,
    # need an importance matrix for real models (llama-quant.cpp:856-875: tensors typed IQ1_*, IQ2_XXS/XS/S,
    # IQ3_XXS, or Q2_K in a Q2_K_S file; IQ3_XS puts IQ3_XXS in attn_q/k and mid ffn_up/gate, :611-708)
    "Q2_K_S": 21, "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29, "IQ1_S": 24, "IQ1_M": 31,
    "IQ3_XXS": 23, "IQ3_XS": 22,
    "COPY": 0,  # ALL_F32 + only_copy: tensors copied unchanged (quantize.cpp:584)
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
FTYPE_NAMES = {v: k for k, v in FTYPES.items() if k != "COPY"}
NEEDS_IMATRIX = frozenset({"Q2_K_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "IQ3_XS"})
SUPPORTED = tuple(k for k in FTYPES if k not in NEEDS_IMATRIX)
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "COPY"})

_IMATRIX_KEYS = ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                 "quantize.imatrix.chunks_count")  # tools/quantize/quantize.cpp:77-80


def parse_ftype(name: str) -> str:
    key = ALIASES.get(name.upper(), name.upper())
    if key not in FTYPES:
        raise InputError(f"unknown quantization type {name!r}; choose one of {', '.join(FTYPES)}")
    return key


def require_imatrix(ftype: str, imatrix) -> None:
    """Refuse, before any work, a type whose tensors llama.cpp quantizes only with an imatrix."""
    if ftype in NEEDS_IMATRIX and imatrix is None:
        raise InputError(f"{ftype} needs an importance matrix (--imatrix FILE, made by llama-imatrix); "
                         "without one llama.cpp refuses it or its result is garbage")


def parse_ggml_type(name: str | None) -> int | None:
    """--output-tensor-type / --token-embedding-type: a ggml type name (q8_0, q6_K, f16, ...)."""
    if name is None:
        return None
    from gguf import GGMLQuantizationType

    for t in GGMLQuantizationType:
        if t.name.lower() == name.lower():
            return int(t)
    raise InputError(f"unknown tensor type {name!r} (expected a ggml type such as q8_0, q6_k, f16)")


@dataclass
class Imatrix:
    data: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    path: str = ""


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an imatrix file (GGUF or legacy .dat) into per-tensor importance vectors."""
    path = Path(path)
    if not path.is_file():
        raise InputError("imatrix file does not exist", path)
    with open(path, "rb") as f:
        magic = f.read(4)
    out = _load_imatrix_gguf(path) if magic == b"GGUF" else _load_imatrix_legacy(path)
    for name, v in out.data.items():
        if not np.all(np.isfinite(v)):
            raise InputError(f"imatrix entry {name!r} contains non-finite values", path)
    if not out.data:
        raise InputError("imatrix has no entries", path)
    out.path = str(path)
    return out


def _load_imatrix_gguf(path: Path) -> Imatrix:
    from gguf import GGUFReader

    try:
        r = GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - gguf raises bare ValueError/struct errors
        raise InputError(f"cannot read imatrix GGUF ({exc})", path) from None
    keys = {f.name: f for f in r.fields.values()}
    if not all(k in keys for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")):
        raise InputError("imatrix GGUF lacks imatrix.* metadata (quantize.cpp refuses it too)", path)
    datasets = [str(s) for s in keys["imatrix.datasets"].contents()]
    chunk_count = int(keys["imatrix.chunk_count"].contents())
    sums, counts = {}, {}
    for t in r.tensors:
        arr = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = arr
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.rint(arr)
    data = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise InputError(f"imatrix has sums without counts (or the reverse) for {name!r}", path)
        s, c = sums[name], counts[name]
        per = s.reshape(len(c), -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(c[:, None] > 0, per / np.maximum(c[:, None], 1), 1.0)  # quantize.cpp:200-213
        data[name] = np.ascontiguousarray(v.reshape(-1), dtype=np.float32)
    return Imatrix(data, datasets, chunk_count)


def _load_imatrix_legacy(path: Path) -> Imatrix:
    raw = path.read_bytes()
    try:
        (n,) = struct.unpack_from("<i", raw, 0)
        if n < 1:
            raise ValueError("no entries")
        off, data = 4, {}
        for _ in range(n):
            (ln,) = struct.unpack_from("<i", raw, off)
            name = raw[off + 4: off + 4 + ln].decode()
            off += 4 + ln
            ncall, nval = struct.unpack_from("<ii", raw, off)
            off += 8
            if nval < 1:
                raise ValueError(f"entry {name!r} has no values")
            v = np.frombuffer(raw, dtype="<f4", count=nval, offset=off).astype(np.float32)
            off += 4 * nval
            data[name] = v / ncall if ncall > 0 else v  # quantize.cpp:228-238
        chunk_count, datasets = 0, []
        if off + 4 <= len(raw):
            (chunk_count,) = struct.unpack_from("<i", raw, off)
            if off + 8 <= len(raw):
                (ln,) = struct.unpack_from("<i", raw, off + 4)
                if ln > 0:
                    datasets = [raw[off + 8: off + 8 + ln].decode("utf-8", "replace")]
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not an imatrix file (GGUF or legacy .dat): {exc}", path) from None
    return Imatrix(data, datasets, chunk_count)


def _tensor_bytes(info: GGUFInfo) -> dict[str, int]:
    from minicpmv_edge.gguf_layout import nbytes

    return {t.name: nbytes(t.shape, t.ggml_type, t.name, info.path) for t in info.tensors}


@dataclass
class QuantizeResult:
    path: Path
    ftype: str
    bytes: int
    seconds: float
    input_bytes: int


def precheck(summary: GGUFInfo, ftype: str, allow_requantize: bool, imatrix: Imatrix | None,
             keep: frozenset[str] = frozenset()) -> None:
    if summary.arch == "clip":
        raise InputError("this is a vision projector (mmproj); quantize it with quantize.mmproj "
                         "(the CLI routes it automatically)", summary.path)
    require_imatrix(ftype, imatrix)
    from gguf import GGMLQuantizationType as Q

    quantized = [t for t in summary.tensors if t.ggml_type not in (Q.F32, Q.F16, Q.BF16) and t.name not in keep]
    if quantized and not allow_requantize:
        t = quantized[0]
        raise InputError(f"already quantized ({Q(t.ggml_type).name} tensors, e.g. {t.name}); "
                         "quantize the F16/BF16/F32 file instead, or pass --allow-requantize (quality suffers)",
                         summary.path)


def quantize_text(inp: str | os.PathLike[str], out: str | os.PathLike[str], ftype: str = "Q4_K_M", *,
                  imatrix: Imatrix | str | os.PathLike[str] | None = None, output_tensor_type: str | None = None,
                  token_embedding_type: str | None = None, allow_requantize: bool = False,
                  nthread: int | None = None, keep_types: dict[str, int] | None = None) -> QuantizeResult:
    """Quantize a text GGUF with llama.cpp. `keep_types` names tensors to copy unchanged
    (e.g. int4 checkpoints' losslessly repacked Q4_0/Q4_1 weights)."""
    t0 = time.perf_counter()
    from minicpmv_edge.extras import require

    require("runtime", "quantizing a text model (llama.cpp's quantizer)")
    inp, out = Path(inp), Path(out)
    ftype = parse_ftype(ftype)
    ott, tet = parse_ggml_type(output_tensor_type), parse_ggml_type(token_embedding_type)
    if imatrix is not None and not isinstance(imatrix, Imatrix):
        imatrix = load_imatrix(imatrix)
    summary = read_info(inp)
    keep_types = dict(keep_types or {})
    precheck(summary, ftype, allow_requantize, imatrix, frozenset(keep_types))
    if not out.parent.is_dir():
        raise OutputError("output directory does not exist", out.parent)
    if out.resolve() == inp.resolve():
        raise InputError("input and output are the same file", out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    float_target = ftype in FLOAT_TYPES
    try:
        errors = _run(inp, tmp, FTYPES[ftype], imatrix, ott, tet,
                      allow_requantize or (float_target and bool(keep_types)),
                      nthread or os.cpu_count() or 1, {} if float_target else keep_types,
                      only_copy=ftype == "COPY", sizes=_tensor_bytes(summary))
        if errors is not None:
            if any(s in errors for s in ("iostream", "basic_ios", "No space", "File too large")):
                raise OutputError("disk full (or file size limit) while writing; no partial output was kept", out)
            raise RuntimeFailure(f"llama.cpp could not quantize: {errors}", inp)
        os.replace(tmp, out)
    except KeyboardInterrupt:
        from minicpmv_edge.errors import Interrupted

        raise Interrupted("interrupted; no partial output was kept", out) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return QuantizeResult(out, ftype, out.stat().st_size, time.perf_counter() - t0, inp.stat().st_size)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


class _Progress(logging.Handler):
    """Advances a progress bar from llama.cpp's per-tensor line `[  12/ 399] name - [...]`
    (llama-quant.cpp:1227): the quantizer has no progress callback of its own."""

    _LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")

    def __init__(self, bar, sizes: dict[str, int]):
        super().__init__(logging.INFO)
        self.bar, self.sizes, self.last = bar, sizes, None

    def emit(self, record):
        m = self._LINE.match(record.getMessage())
        if m:
            self.finish()
            self.last = m.group(3)

    def finish(self):
        if self.last is not None:
            self.bar.update(self.sizes.get(self.last, 0))
            self.last = None


def _run(inp: Path, tmp: Path, ftype: int, imatrix: Imatrix | None, ott, tet, allow_requantize: bool,
         nthread: int, keep_types: dict[str, int], only_copy: bool = False,
         sizes: dict[str, int] | None = None) -> str | None:
    """One llama_model_quantize call; returns None on success, llama.cpp's error text otherwise."""
    import llama_cpp as L

    from minicpmv_edge.edge_runtime.engine import init_backend, set_fields

    init_backend()  # routes llama.cpp's log into `logging` (edge_runtime.engine)
    p = L.llama_model_quantize_default_params()
    set_fields(p, nthread=int(nthread), ftype=int(ftype), allow_requantize=bool(allow_requantize),
               only_copy=bool(only_copy))
    if ott is not None:
        set_fields(p, output_tensor_type=ott)
    if tet is not None:
        set_fields(p, token_embedding_type=tet)
    keep_alive: list = []
    if imatrix is not None:
        arrs = [(k.encode(), np.ascontiguousarray(v, dtype=np.float32)) for k, v in imatrix.data.items()]
        entries = (L.llama_model_imatrix_data * (len(arrs) + 1))()
        for i, (k, v) in enumerate(arrs):
            entries[i].name = k
            entries[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = v.size
        keep_alive += [arrs, entries]  # terminator: the last entry stays zeroed (name == NULL)
        set_fields(p, imatrix=ctypes.cast(entries, ctypes.POINTER(L.llama_model_imatrix_data)))
        kvs = [("quantize.imatrix.file", imatrix.path[:127])]
        if imatrix.datasets:
            kvs.append(("quantize.imatrix.dataset", imatrix.datasets[0][:127]))
        kvs.append(("quantize.imatrix.entries_count", len(imatrix.data)))
        if imatrix.chunk_count > 0:
            kvs.append(("quantize.imatrix.chunks_count", imatrix.chunk_count))
        ov = (L.llama_model_kv_override * (len(kvs) + 1))()
        for i, (k, v) in enumerate(kvs):
            ov[i].key = k.encode()
            if isinstance(v, str):
                ov[i].tag = L.LLAMA_KV_OVERRIDE_TYPE_STR
                ov[i].value.val_str = v.encode()[:127]
            else:
                ov[i].tag = L.LLAMA_KV_OVERRIDE_TYPE_INT
                ov[i].value.val_i64 = int(v)
        keep_alive.append(ov)
        set_fields(p, kv_overrides=ctypes.cast(ov, ctypes.POINTER(L.llama_model_kv_override)))
    if keep_types:
        tt = (L.llama_model_tensor_override * (len(keep_types) + 1))()
        pats = [f"^{re.escape(n)}$".encode() for n in keep_types]
        for i, (pat, ty) in enumerate(zip(pats, keep_types.values())):
            tt[i].pattern = pat
            tt[i].type = int(ty)
        tt[len(keep_types)].type = 43  # GGML_TYPE_COUNT (ggml.h:433) sentinel beside the NULL pattern (quantize.cpp:551)
        keep_alive += [pats, tt]
        set_fields(p, tt_overrides=ctypes.cast(tt, ctypes.POINTER(L.llama_model_tensor_override)))
    engine_log = logging.getLogger("minicpmv_edge.edge_runtime.engine")
    cap = _Capture()
    bar = progress.bar(sum(sizes.values()) if sizes else None, f"quantizing to {FTYPE_NAMES.get(ftype, ftype)}")
    prog = _Progress(bar, sizes or {})
    engine_log.addHandler(cap)
    engine_log.addHandler(prog)
    prev, prev_level = engine_log.propagate, engine_log.level
    engine_log.propagate = log.isEnabledFor(logging.INFO)  # llama.cpp's own lines only with -v
    engine_log.setLevel(logging.INFO)  # the per-tensor lines drive the progress bar
    try:
        with bar:
            rc = L.llama_model_quantize(str(inp).encode(), str(tmp).encode(), ctypes.byref(p))
            if rc == 0:
                prog.finish()
    finally:
        engine_log.removeHandler(cap)
        engine_log.removeHandler(prog)
        engine_log.propagate = prev
        engine_log.setLevel(prev_level)
    del keep_alive
    if rc == 0:
        return None
    msg = " ".join(ln.strip() for ln in cap.lines if "failed to quantize" in ln) or " ".join(cap.lines[-3:])
    return msg.replace("llama_model_quantize: failed to quantize: ", "").strip() or f"code {rc}"
