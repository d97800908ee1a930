"""Export MiniCPM-V's vision tower + resampler/merger as one graph (ONNX or CoreML).

    from minicpmv_edge.convert.vision_export import export_vision
    res = export_vision("ckpt/", "out/vision-onnx", "onnx", grids=[(32, 32), (28, 36)])

Optional extra `vision-export` (torch, onnx, onnxscript, coremltools, numpy<2.4); only
this package and `minicpmv-edge export-vision` import them. The folder gets the graph
files and `metadata.json`: the contract (inputs, outputs, shapes, dtypes, mean/std,
tokens per grid, and which mmproj/text model it belongs to) that the runtime
(edge_runtime/external_encoder.py), the C bridge and apps check before use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from minicpmv_edge import __version__, progress
from minicpmv_edge.errors import InputError, OutputError

FORMATS = ("onnx", "coreml")
PRECISIONS = ("fp32", "fp16")
METADATA = "metadata.json"
METADATA_SCHEMA = 1
DEFAULT_GRIDS = ((32, 32),)  # one 448x448 slice; the CLI adds what mtmd makes of common photos


@dataclass
class ExportResult:
    out_dir: Path
    metadata: dict
    module: object  # the torch module whose weights were exported (state hash in metadata)
    traced: list  # CoreML: the FixedGrid wrappers that were traced (their .inner is `module`)
    seconds: float


def _require(fmt: str, verify: bool) -> None:
    """Every optional module this export imports, checked before anything is built or written."""
    from minicpmv_edge.extras import missing, require

    if fmt == "coreml":
        require("coreml", "export-vision --format coreml")
        return
    gone = [m for m in missing("vision-export") if verify or m != "onnxruntime"]
    if gone:
        from minicpmv_edge.errors import MissingExtraError

        raise MissingExtraError(f"export-vision --format onnx needs {', '.join(gone)}: "
                                "pip install 'minicpmv-edge[vision-export]'")


def parse_grid(text: str) -> tuple[int, int]:
    """"32x32" (patch rows x columns) -> (32, 32)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise InputError(f"grid {text!r} is not ROWSxCOLS in patches, e.g. 32x32 for 448x448 pixels") from None
    if h <= 0 or w <= 0:
        raise InputError(f"grid {text!r} must be positive")
    return h, w


def check_grids(grids, graph: str, n_merge: int) -> list[tuple[int, int]]:
    out = []
    for gh, gw in grids:
        if gh <= 0 or gw <= 0:
            raise InputError(f"grid {gh}x{gw} must be positive")
        if graph == "merger" and (gh % n_merge or gw % n_merge):
            raise InputError(f"grid {gh}x{gw}: MiniCPM-V 4.6 slices are multiples of {n_merge} patches "
                             f"(the 2x2 merges need it); mtmd never produces this grid")
        if gh * gw > 4900 * 4:
            raise InputError(f"grid {gh}x{gw} is larger than any slice mtmd makes")
        if (gh, gw) not in out:
            out.append((int(gh), int(gw)))
    if not out:
        raise InputError("no grids to export")
    return out


def export_vision(src, out_dir, fmt: str = "onnx", grids=None, precisions=PRECISIONS,
                  verify: bool = True) -> ExportResult:
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise InputError(f"unknown precision {bad}; choose from {', '.join(PRECISIONS)}")
    _require(fmt, verify)
    from .build import build

    built = build(src)
    meta = built.meta
    if callable(grids):  # the CLI derives them from mtmd's slicing of common photo sizes
        grids = grids(dict(meta["slicing"], patch_size=meta["patch_size"]))
    grids = check_grids(grids or DEFAULT_GRIDS, built.graph, int(meta["slicing"]["n_merge"]))
    final_dir = Path(out_dir)
    try:
        final_dir.mkdir(parents=True, exist_ok=True)
        # everything is written here first and moved into place only when the export is complete
        out_dir = Path(tempfile.mkdtemp(prefix=".export-tmp-", dir=final_dir))
    except OSError as exc:
        raise OutputError(f"cannot create output directory ({exc.strerror})", final_dir) from None
    try:
        meta, traced = _export(built, meta, out_dir, fmt, grids, precisions, verify)
        _publish(out_dir, final_dir, meta)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return ExportResult(final_dir, meta, built.module, traced, time.perf_counter() - t0)


def _publish(tmp_dir: Path, final_dir: Path, meta: dict) -> None:
    """Move the finished files into `final_dir`, metadata.json last (a reader never sees a new graph
    described by an old contract, or metadata naming files that are not there)."""
    (final_dir / METADATA).unlink(missing_ok=True)
    for name in meta["files"].values():
        dst = final_dir / name
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(tmp_dir / name, dst)
    write_metadata(final_dir, meta)


def _export(built, meta: dict, out_dir: Path, fmt: str, grids, precisions, verify: bool):
    from .build import state_sha256

    patch = int(meta["patch_size"])
    vit = bool(meta.get("use_vit_merger", True))
    names = list(built.module.input_names)
    meta.update(schema=METADATA_SCHEMA, format=fmt, tool_version=__version__,
                grids=[list(g) for g in grids], tokens={f"{h}x{w}": built.tokens(h, w) for h, w in grids},
                module={"class": type(built.module).__name__, "state_sha256": state_sha256(built.module)})
    traced = []
    if fmt == "onnx":
        from .onnx_export import export_onnx
        from minicpmv_edge.vision_inputs import DESCRIPTIONS

        files = {}
        with progress.bar(len(precisions), "exporting ONNX graphs", unit="graph") as bar:
            for prec in precisions:
                path = out_dir / f"vision-{prec}.onnx"
                export_onnx(built.module, path, built.graph, patch, vit, fp16=(prec == "fp16"), grid=grids[0])
                files[prec] = path.name
                bar.update(1)
        meta["files"] = files
        meta["inputs"] = [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, "height", "width"],
                           "description": "RGB, x/255 then (x - image_mean) / image_std; height = rows*patch_size"}]
        meta["inputs"] += [{"name": n, "dtype": "float32" if n == "pos_hw" else "int64",
                            "shape": ["patches", 2] if n == "pos_hw" else
                            ["merged_patches" if n == "merger_idx" else "patches"], "description": DESCRIPTIONS[n]}
                           for n in names[1:]]
        if verify:
            meta["verification"] = _verify_onnx(built, out_dir, files, grids)
    else:
        from .coreml_export import COMPUTE_UNITS, DEPLOYMENT_TARGET, export_coreml

        files = {}
        with progress.bar(len(grids), "exporting CoreML packages", unit="grid") as bar:
            for gh, gw in grids:
                path = out_dir / f"vision-{gh}x{gw}.mlpackage"
                _, fixed = export_coreml(built.module, path, built.graph, gh, gw, patch, vit)
                traced.append(fixed)
                files[f"{gh}x{gw}"] = path.name
                bar.update(1)
        meta["files"] = files
        meta.update(precision="float16", compute_units=COMPUTE_UNITS, minimum_deployment_target=DEPLOYMENT_TARGET,
                    model_type="mlprogram")
        meta["inputs"] = [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, "height", "width"],
                           "description": "one package per grid (files); position indices are baked in"}]
    meta["outputs"] = [{"name": "embeddings", "dtype": "float32", "shape": ["tokens", meta["text_hidden"]],
                        "description": "tokens: see `tokens` per grid"}]
    return meta, traced


def _verify_onnx(built, out_dir: Path, files: dict, grids) -> dict:
    """Run the exported graphs once on the first grid against the torch module."""
    import numpy as np
    import torch

    from .onnx_export import example_inputs, run_onnx

    gh, gw = grids[-1]
    args = example_inputs(built.graph, built.module.input_names, gh, gw, int(built.meta["patch_size"]),
                          bool(built.meta.get("use_vit_merger", True)), seed=1)
    with torch.no_grad():
        ref = built.module(*args).numpy()
    feeds = {n: a.numpy() for n, a in zip(built.module.input_names, args)}
    out = {"grid": [gh, gw]}
    for prec, name in files.items():
        got = run_onnx(out_dir / name, feeds)
        out[f"{prec}_max_abs_diff"] = float(np.abs(got - ref).max())
    return out


def write_metadata(out_dir: Path, meta: dict) -> Path:
    path = Path(out_dir) / METADATA
    tmp = path.with_name(f".{METADATA}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)
    return path


__all__ = ["export_vision", "ExportResult", "parse_grid", "FORMATS", "PRECISIONS", "METADATA"]
