"""One conversion: checkpoint dir -> text GGUF + mmproj GGUF + manifest.json.

Both files are planned in full (names, shapes, types; every source tensor
accounted for) before a byte is written, so shape and coverage errors surface
before any output exists. A failure after the text file is written removes it
again: a folder holds a complete pair or nothing new.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from gguf import GGMLQuantizationType as Q
from gguf import GGML_QUANT_VERSION, GGUFWriter

from minicpmv_edge import __version__, schema, video_facts
from minicpmv_edge import progress as bars
from minicpmv_edge.errors import CheckpointError, InputError, OutputError
from minicpmv_edge.manifest import Manifest

from . import families
from .checkpoint_check import check_config, check_tokenizer_json
from .dtypes import FILE_TYPE, parse_outtype
from .generation_config import add_sampling, read_sampling
from .safetensors_reader import Checkpoint
from .writer import PlannedTensor, write_gguf

log = logging.getLogger(__name__)


@dataclass
class ConvertResult:
    manifest: Manifest
    text_path: Path
    mmproj_path: Path
    seconds: float
    source_bytes: int


def convert(
    src: str | Path,
    out_dir: str | Path,
    outtype: str = "f16",
    family: str | None = None,
    progress: Callable[[str, int, int, PlannedTensor], None] | None = None,
    quant: str | None = None,
    keep_intermediate: bool = False,
    threads: int | None = None,
    imatrix: str | Path | None = None,
) -> ConvertResult:
    """Convert `src`; with `quant` (a llama.cpp type such as Q4_K_M) the text model is then
    quantized by llama.cpp and the intermediate deleted unless `keep_intermediate`.
    int4 (GPTQ/AWQ) checkpoints are unpacked by quantize.int4: weights whose groups
    tile GGUF blocks are repacked losslessly into Q4_0/Q4_1, the rest dequantized.
    `threads`: block-conversion threads (and llama.cpp's quantizer threads with `quant`);
    `imatrix`: an importance matrix for `quant` (llama-imatrix output)."""
    t0 = time.perf_counter()
    from .stream import set_workers

    set_workers(threads)
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise InputError("is not a directory (give the checkpoint folder)" if src.exists()
                         else "checkpoint directory does not exist", src)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("is a file, expected a folder for the output (-o)", out_dir)
    qtype = parse_outtype(outtype)
    config = families.read_config(src)
    check_config(config, src / "config.json")  # types and ranges, before any family module reads a value
    check_tokenizer_json(src)
    fam = families.by_name(family) if family else families.detect(config, src)
    if imatrix is not None and not quant:
        raise InputError("--imatrix needs --quant TYPE (it guides llama.cpp's quantizer)")
    if quant:
        from minicpmv_edge.quantize.llama import load_imatrix, parse_ftype, require_imatrix

        quant = parse_ftype(quant)  # unknown types fail before any work
        imatrix = load_imatrix(imatrix) if imatrix is not None else None
        require_imatrix(quant, imatrix)
    sampling = read_sampling(src)  # bad generation_config.json fails before any work
    ckpt, int4 = _open_checkpoint(src, config)
    try:
        plan = fam().plan(src, ckpt, config, qtype)
        if int4 is not None:
            from minicpmv_edge.quantize.int4 import plan_repack

            plan.text_tensors = plan_repack(plan.text_tensors, ckpt, int4)
            if int4.dequantized:
                log.warning("%d %s tensors cannot be repacked losslessly (act-order, group size or layout); "
                            "dequantized and written as %s, e.g. %s", len(int4.dequantized), int4.method,
                            outtype.lower(), int4.dequantized[0])
        unmapped = sorted(set(ckpt.names()) - plan.consumed)
        if unmapped:
            raise CheckpointError(f"{len(unmapped)} tensors not mapped by {fam.name}, e.g. {unmapped[:3]}", src)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output directory ({exc.strerror})", out_dir) from None
        slug = fam.name
        text_type = outtype.lower() if int4 is None else f"{int4.method}-{outtype.lower()}"
        text_path = out_dir / f"{slug}-text-{text_type}.gguf"
        mm_type = "f32" if outtype.lower() == "f32" else "f16"
        mm_path = out_dir / f"{slug}-mmproj-{mm_type}.gguf"

        def text_meta(w: GGUFWriter) -> None:
            w.add_name(f"MiniCPM-V {fam.model_version}")
            w.add_type("model")
            w.add_quantization_version(GGML_QUANT_VERSION)
            w.add_file_type(FILE_TYPE[qtype])
            add_sampling(w, sampling)  # as llama.cpp's converter: in both files
            plan.add_text_metadata(w)
            _add_edge_keys(w, fam, src)
            replace(plan.facts, projector_type=plan.projector_type, projector_version=plan.projector_version).write(w)
            video_facts.for_family(fam.name).write(w)

        def mm_meta(w: GGUFWriter) -> None:
            w.add_name(f"MiniCPM-V {fam.model_version} vision projector")
            w.add_quantization_version(GGML_QUANT_VERSION)
            w.add_file_type(1 if mm_type == "f16" else 0)
            add_sampling(w, sampling)
            plan.add_mmproj_metadata(w)
            _add_edge_keys(w, fam, src)

        bar = bars.bar(sum(planned_nbytes(t) for t in plan.text_tensors + plan.mmproj_tensors), f"converting {fam.name}")

        def cb(kind):
            def on_tensor(i, n, t):
                bar.update(planned_nbytes(t))
                if progress:
                    progress(kind, i, n, t)
            return on_tensor

        with bar:
            write_gguf(text_path, plan.text_arch, text_meta, plan.text_tensors, cb("text"), ckpt=ckpt)
            try:
                write_gguf(mm_path, "clip", mm_meta, plan.mmproj_tensors, cb("mmproj"), ckpt=ckpt)
            except BaseException:
                text_path.unlink(missing_ok=True)
                raise
    finally:
        ckpt.close()
    files = {text_path.name: {"kind": "text", "type": text_type, "bytes": text_path.stat().st_size},
             mm_path.name: {"kind": "mmproj", "type": mm_type, "bytes": mm_path.stat().st_size}}
    notes: dict = {}
    if int4 is not None:
        notes["int4"] = int4.as_dict()
    if quant:
        text_path = _quantize_text(text_path, mm_path, out_dir / f"{slug}-text-{quant.lower()}.gguf", quant,
                                   int4, keep_intermediate, files, imatrix=imatrix, threads=threads)
        notes["text_quant"] = {"type": quant, "tool": "llama_model_quantize", "from": text_type,
                               "kept_intermediate": keep_intermediate,
                               **({"imatrix": imatrix.path} if imatrix is not None else {})}
    manifest = Manifest(
        family=fam.name, text=text_path.name, mmproj=mm_path.name, source=str(src.resolve()),
        tool_version=__version__, outtype=quant.lower() if quant else outtype.lower(), files=files, quant=notes,
    )
    manifest.save(out_dir)
    return ConvertResult(manifest, text_path, mm_path, time.perf_counter() - t0, ckpt.total_bytes())


def planned_nbytes(t: PlannedTensor) -> int:
    """Bytes `t` takes in the GGUF (what the progress bar counts)."""
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[t.qtype]
    n = 1
    for d in t.shape:
        n *= d
    return n // block * size


def _open_checkpoint(src: Path, config: dict):
    ckpt = Checkpoint(src)
    from minicpmv_edge.quantize.int4 import Int4Checkpoint, Int4Config, Int4Report

    try:
        cfg = Int4Config.from_config(config)
        if cfg is None:
            return ckpt, None
        return Int4Checkpoint(ckpt, cfg), Int4Report(cfg.method, cfg.bits, cfg.group_size, cfg.desc_act)
    except BaseException:
        ckpt.close()
        raise


def _quantize_text(text_path: Path, mm_path: Path, q_path: Path, quant: str, int4, keep: bool,
                   files: dict, imatrix=None, threads: int | None = None) -> Path:
    """llama.cpp quantizes the text file; on failure the whole new pair goes, as for convert."""
    from minicpmv_edge.quantize.llama import quantize_text

    keep_types = {n: int(getattr(Q, t)) for n, t in int4.repacked.items()} if int4 is not None else {}
    try:
        res = quantize_text(text_path, q_path, quant, keep_types=keep_types, imatrix=imatrix, nthread=threads)
    except BaseException:
        text_path.unlink(missing_ok=True)
        mm_path.unlink(missing_ok=True)
        raise
    files[q_path.name] = {"kind": "text", "type": quant.lower(), "bytes": res.bytes}
    if keep:
        files[text_path.name]["kind"] = "text-intermediate"
    else:
        text_path.unlink()
        del files[text_path.name]
    return q_path


def _add_edge_keys(w: GGUFWriter, fam, src: Path) -> None:
    w.add_uint32(schema.EDGE_SCHEMA_VERSION, schema.SCHEMA_VERSION)
    w.add_string(schema.EDGE_TOOL_VERSION, __version__)
    w.add_string(schema.EDGE_FAMILY, fam.name)
    w.add_string(schema.EDGE_MODEL_VERSION, fam.model_version)
    w.add_string(schema.EDGE_SOURCE, src.resolve().name)
