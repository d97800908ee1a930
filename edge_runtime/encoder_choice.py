"""Which vision encoder a model uses, and in which projector storage type.

`LoadOptions.vision_encoder`: "mtmd" (llama.cpp's encoder: mtmd for the resampler families, the same
clip graph through clip_encoder.py for the merger families), "onnx" (an `export-vision` folder run
by ONNX Runtime, `vision_onnx` + `onnx_precision` fp32/fp16/int8), an encoder object
(external_encoder.py's protocol), or "auto"/None: this platform's default.
`LoadOptions.mmproj_type` ("f16", "q8_0", ...): the projector is used in that storage type; a
different type than the file's is made once with `minicpmv-edge quantize`'s rules
(quantize/mmproj.py: SigLIP's 4304-wide rows stay F16) into the cache folder and reused.

The defaults come from measurements (BENCHMARKS.md, "Vision encoder levers"): a lever becomes a
platform's default only where it was measured faster there at the fidelity floor (per-token
cosine >= 0.995 against the F16 projector, the same greedy answers in tests/test_encoder_choice.py).
Measured: x86-64 CPUs (ONNX Runtime fp32 when an export is present; the projector stays F16) and a
CUDA GPU (the projector stays F16). Platforms without a measurement (ARM, Metal) keep llama.cpp's
encoder and the projector as given.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from minicpmv_edge.encoder_options import MMPROJ_TYPES, ONNX_PRECISIONS, VISION_ENCODERS
from minicpmv_edge.errors import InputError

log = logging.getLogger(__name__)

# llama_ftype (general.file_type) -> our name; quantize/mmproj.py writes these
_FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1"}

# Measured defaults (BENCHMARKS.md, "Vision encoder levers"), by platform_key:
# - the projector's storage type for llama.cpp's encoder: none changes it. Q8_0 was slower than F16 on
#   both x86 machines measured (AVX-512 FP16 makes ggml's F16 matmul the fast one: x1.03 on the 2-core VM,
#   x1.45 on the 16-core host) and on the H200 (x1.12); Q5_0/Q4_0 slower still and Q4_0 under the floor.
# - ONNX Runtime instead of llama.cpp's encoder where it was faster at the fidelity floor, when an
#   export-vision folder is there (vision_onnx, else <the projector's folder>/vision-onnx).
DEFAULT_MMPROJ_TYPE: dict[str, str] = {}
AUTO_ONNX: dict[str, str] = {"x86_64": "fp32"}


def platform_key(mmproj_gpu: bool) -> str:
    if mmproj_gpu:
        return "gpu"
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def cache_root() -> Path:
    return Path(os.environ.get("MINICPMV_EDGE_CACHE", Path.home() / ".cache" / "minicpmv-edge"))


@dataclass(frozen=True)
class EncoderChoice:
    kind: str  # "mtmd" | "onnx" | "external"
    mmproj: Path | None  # the projector file llama.cpp loads (maybe a derived copy)
    mmproj_type: str | None  # its storage type
    external: object | None  # an encoder object replacing llama.cpp's (ONNX Runtime or the caller's)
    why: str  # one line for -v and the benchmarks

    def describe(self) -> str:
        return f"{self.kind}" + (f" ({self.mmproj_type} projector)" if self.mmproj_type else "") + f": {self.why}"


def file_type(mmproj: str | Path) -> str | None:
    from minicpmv_edge.gguf_info import read_info

    ft = read_info(mmproj, tensors=False).kv.get("general.file_type")
    return _FILE_TYPES.get(int(ft)) if ft is not None else None


def derived_projector(mmproj: str | Path, qtype: str) -> Path:
    """`mmproj` stored as `qtype`, made once into the cache folder (keyed by the file's hash)."""
    from minicpmv_edge.quantize.mmproj import quantize_mmproj

    from .embedding_store import file_fingerprint

    folder = cache_root() / "mmproj"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{file_fingerprint(mmproj, folder)[:24]}-{qtype}.gguf"
    if not out.exists():
        log.warning("making a %s copy of the vision projector %s (once, into %s)", qtype.upper(), mmproj, folder)
        quantize_mmproj(mmproj, out, qtype.upper())  # temp name + rename: never a half-written copy
    return out


def choose(vision_encoder, mmproj: str | Path | None, mmproj_type: str | None, mmproj_gpu: bool,
           vision_onnx: str | Path | None, onnx_precision: str, n_threads: int, family: str | None = None,
           text_n_embd: int | None = None) -> EncoderChoice:
    """Resolve the load options into the projector file and encoder to use (see the module docstring).
    `family` / `text_n_embd`: what an export found by `auto` must match to be used."""
    if mmproj is None:
        if vision_encoder not in (None, "auto"):
            raise InputError("vision_encoder needs an mmproj (mtmd still slices and tokenizes images)")
        return EncoderChoice("mtmd", None, None, None, "no projector")
    if mmproj_type is not None and str(mmproj_type).lower() not in MMPROJ_TYPES:
        raise InputError(f"mmproj_type must be one of {', '.join(MMPROJ_TYPES)}, got {mmproj_type!r} "
                         "(never BF16; K-quants do not fit SigLIP's 1152/4304-wide rows)")
    if onnx_precision not in ONNX_PRECISIONS:
        raise InputError(f"onnx_precision must be one of {', '.join(ONNX_PRECISIONS)}, got {onnx_precision!r}")
    if isinstance(vision_encoder, str) and vision_encoder not in VISION_ENCODERS:
        raise InputError(f"vision_encoder must be one of {', '.join(VISION_ENCODERS)} or an encoder object, "
                         f"got {vision_encoder!r}")
    stored = file_type(mmproj)
    if vision_encoder not in (None, "auto", "mtmd", "onnx"):  # the caller's encoder object
        return EncoderChoice("external", Path(mmproj), stored, vision_encoder,
                             f"the caller's {type(vision_encoder).__name__}")
    if vision_encoder == "onnx":
        if vision_onnx is None:
            raise InputError("vision_encoder 'onnx' needs the export-vision folder (vision_onnx / --vision-onnx)")
        from .external_encoder import OnnxVisionEncoder

        enc = OnnxVisionEncoder(vision_onnx, precision=onnx_precision, n_threads=n_threads)
        return EncoderChoice("onnx", Path(mmproj), stored, enc,
                             f"ONNX Runtime {onnx_precision} ({vision_onnx})")
    want = str(mmproj_type).lower() if mmproj_type else None
    why = "asked for"
    if want is None and vision_encoder in (None, "auto"):
        auto = _auto_onnx(platform_key(mmproj_gpu), mmproj, vision_onnx, n_threads, family, text_n_embd)
        if auto is not None:
            return EncoderChoice("onnx", Path(mmproj), stored, auto[0], auto[1])
        key = platform_key(mmproj_gpu)
        want = DEFAULT_MMPROJ_TYPE.get(key)
        why = f"the measured default on {key}" if want else f"no measured default on {key}: the file as given"
        if want and stored not in ("f16", "f32"):
            want, why = None, f"the file is already {stored}"
    elif want is None:
        why = "the file as given"
    path = Path(mmproj)
    if want and want != stored:
        path = derived_projector(mmproj, want)
    return EncoderChoice("mtmd", path, want or stored, None, why)


def _auto_onnx(key: str, mmproj, vision_onnx, n_threads: int, family, text_n_embd):
    """(encoder, why) when this platform's default is ONNX Runtime and a usable export is there; else None."""
    precision = AUTO_ONNX.get(key)
    folder = Path(vision_onnx) if vision_onnx else Path(mmproj).parent / "vision-onnx"
    if precision is None or not (folder / "metadata.json").exists():
        return None
    from minicpmv_edge.errors import EdgeError

    from .external_encoder import OnnxVisionEncoder

    try:
        enc = OnnxVisionEncoder(folder, precision=precision, n_threads=n_threads)
        enc.check(mmproj=str(mmproj), text_n_embd=text_n_embd, family=family)
    except (EdgeError, ImportError, OSError) as exc:  # an export we cannot use: llama.cpp's encoder then
        log.warning("not using the vision export %s: %s", folder, exc)
        return None
    return enc, f"the measured default on {key}: ONNX Runtime {precision} ({folder})"


__all__ = ["EncoderChoice", "choose", "VISION_ENCODERS", "MMPROJ_TYPES", "ONNX_PRECISIONS", "DEFAULT_MMPROJ_TYPE", "AUTO_ONNX",
           "platform_key", "derived_projector", "cache_root"]
