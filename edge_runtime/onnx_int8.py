"""int8 dynamic quantization of an exported ONNX vision encoder (ONNX Runtime's quantize_dynamic).

`export-vision` writes fp32 and fp16 graphs; int8 is one more lever for CPUs with fast integer
dot products (VNNI/AMX on x86, dotprod/i8mm on ARM). The weights of every MatMul become int8
(per-channel), activations are quantized per call; made once from the fp32 graph into the same
folder as `vision-int8.onnx` and reused. Its fidelity is measured, not assumed: bench/vision_levers.py
reports the per-token cosine against the F16 projector, and the runtime's tests check the floor.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from minicpmv_edge.errors import InputError
from minicpmv_edge.extras import need

log = logging.getLogger(__name__)

INT8_FILE = "vision-int8.onnx"


def ensure_int8(export_dir: str | Path) -> Path:
    """The int8 graph of `export_dir`, made from its fp32 graph on first use."""
    from .external_encoder import load_metadata

    export_dir = Path(export_dir)
    meta = load_metadata(export_dir)
    files = meta.get("files", {})
    if "int8" in files:
        return export_dir / files["int8"]
    out = export_dir / INT8_FILE
    src = export_dir / files.get("fp32", "")
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    if "fp32" not in files:
        raise InputError("int8 needs the export's fp32 graph (export-vision --precision fp32)", export_dir)
    ortq = need("onnxruntime.quantization", "onnx", "the int8 ONNX vision encoder")
    QuantType, quantize_dynamic = ortq.QuantType, ortq.quantize_dynamic
    log.warning("making an int8 copy of %s (once)", src)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


__all__ = ["ensure_int8", "INT8_FILE"]
