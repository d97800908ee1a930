"""`minicpmv-edge export-vision SRC --format onnx|coreml -o OUT`: the vision tower + resampler
(2.6/4.0/4.5) or merger (4.6) as one ONNX graph or CoreML packages, with metadata.json."""

from __future__ import annotations

import json

EXAMPLES = """examples:
  minicpmv-edge export-vision ~/models/MiniCPM-V-4_5 --format onnx -o out/v45-vision-onnx
  minicpmv-edge export-vision ~/models/MiniCPM-V-4.6 --format coreml -o out/v46-ane --grids 32x32
  minicpmv-edge export-vision ./ckpt --format onnx -o out/vis --precision fp16 --json

grids are patch rows x columns (14 px patches): 32x32 is one 448x448 slice. By default the
set is every grid mtmd's LLaVA-UHD slicing makes of common photo sizes (see docs/vision-export.md).
Needs the optional extra: pip install 'minicpmv-edge[vision-export]'."""

# width x height of the photos whose slices the default grid set covers
COMMON_SIZES = [(448, 448), (640, 480), (480, 640), (800, 600), (600, 800), (1024, 768), (768, 1024),
                (1280, 720), (720, 1280), (1920, 1080), (1080, 1920), (1280, 960), (960, 1280),
                (1080, 1080), (1200, 800), (800, 1200), (2048, 1536), (1536, 2048), (4032, 3024),
                (3024, 4032), (2560, 1440), (1440, 2560)]


def common_grids(slicing: dict) -> list[tuple[int, int]]:
    """Patch grids (rows, cols) of every chunk mtmd makes of COMMON_SIZES."""
    from minicpmv_edge.edge_runtime.external_encoder import slice_plan

    p = int(slicing["patch_size"])
    grids: list[tuple[int, int]] = [(slicing["image_size"] // p, slicing["image_size"] // p)]
    for w, h in COMMON_SIZES:
        plan = slice_plan(w, h, slicing["image_size"], p, slicing["n_merge"], slicing["keep_small_whole"])
        for cw, ch in plan.sizes():
            if (ch // p, cw // p) not in grids:
                grids.append((ch // p, cw // p))
    return grids


def add_parser(sub) -> None:
    from ._common import add_command, add_json

    p = add_command(sub, "export-vision", "export the vision encoder (+resampler/merger) to ONNX or CoreML",
                    EXAMPLES)
    p.add_argument("src", metavar="SRC_DIR", help="Hugging Face checkpoint directory")
    p.add_argument("--format", required=True, choices=["onnx", "coreml"], help="onnx (fp32/fp16) or coreml "
                   "(ML Program, fp16, CPU_AND_NE, iOS 17, one .mlpackage per grid)")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument("--grids", metavar="RxC[,RxC...]", help="patch grids to accept (default: common photo sizes)")
    p.add_argument("--precision", default="fp32,fp16", help="onnx only: fp32, fp16 or both")
    p.add_argument("--no-verify", action="store_true", help="onnx: skip the ONNX Runtime vs torch check")
    add_json(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from minicpmv_edge.convert.vision_export import export_vision, parse_grid

    grids = [parse_grid(g) for g in args.grids.split(",")] if args.grids else common_grids
    precisions = tuple(x.strip() for x in args.precision.split(",") if x.strip())
    res = export_vision(args.src, args.out, args.format, grids=grids, precisions=precisions,
                        verify=not args.no_verify)
    m = res.metadata
    summary = {"family": m["family"], "format": m["format"], "out": str(res.out_dir),
               "files": m["files"], "grids": len(m["grids"]), "seconds": round(res.seconds, 2)}
    if "verification" in m:
        summary["verification"] = m["verification"]
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"family   {summary['family']}")
        print(f"format   {summary['format']} ({', '.join(m['files'])})")
        print(f"grids    {summary['grids']} ({', '.join(f'{h}x{w}' for h, w in m['grids'][:6])}"
              f"{', ...' if len(m['grids']) > 6 else ''})")
        print(f"out      {summary['out']} (metadata.json)")
        print(f"took     {summary['seconds']} s")
    return 0
