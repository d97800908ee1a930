"""`minicpmv-edge inspect FILE.gguf [MMPROJ.gguf]`: describe files; check a pair fits."""

from __future__ import annotations

import json
from collections import Counter

EXAMPLES = """examples:
  minicpmv-edge inspect out/minicpmv-4.5-text-f16.gguf
  minicpmv-edge inspect out/minicpmv-4.5-text-f16.gguf out/minicpmv-4.5-mmproj-f16.gguf
  minicpmv-edge inspect out/           # a converted folder (reads manifest.json)"""

KEY_FIELDS = ("general.name", "minicpmv_edge.family", "clip.projector_type", "clip.minicpmv_version",
              "clip.minicpmv_query_num", "clip.vision.image_size", "clip.vision.projector.scale_factor",
              "tokenizer.ggml.model", "tokenizer.ggml.pre",
              # 4.7 / OCR: how images enter the text model (docs/families-4.7-ocr.md)
              "minicpmv_edge.image.positions", "minicpmv_edge.image.small_image_upsize",
              "minicpmv_edge.image.downsample_mode")


def add_parser(sub) -> None:
    from ._common import add_command, add_json

    p = add_command(sub, "inspect", "describe GGUF files and check that a text model and mmproj fit together",
                    EXAMPLES)
    p.add_argument("files", nargs="+", metavar="FILE", help="a .gguf file, a text+mmproj pair, or a converted folder")
    add_json(p)
    p.set_defaults(run=run)


def describe(info) -> dict:
    from gguf import GGMLQuantizationType

    arch = info.arch
    counts = Counter(GGMLQuantizationType(t.ggml_type).name for t in info.tensors)
    d = {"file": str(info.path), "architecture": arch, "tensors": len(info.tensors),
         "dtypes": dict(counts), "bytes": info.path.stat().st_size}
    for k in KEY_FIELDS + tuple(f"{arch}.{s}" for s in ("embedding_length", "block_count", "context_length")):
        if k in info.kv:
            d[k] = info.kv[k]
    if "tokenizer.ggml.tokens" in info.array_lengths:
        d["vocab_size"] = info.array_lengths["tokenizer.ggml.tokens"]
    return d


def run(args) -> int:
    from pathlib import Path

    from minicpmv_edge.errors import InputError
    from minicpmv_edge.gguf_info import pair_problems, read_info
    from minicpmv_edge.manifest import Manifest

    files = list(args.files)
    if len(files) == 1 and Path(files[0]).is_dir():
        m = Manifest.load(files[0])
        files = [str(m.path_of(files[0], "text")), str(m.path_of(files[0], "mmproj"))]
    if len(files) > 2:
        raise InputError("give one file, or a text model and its mmproj")
    infos = [read_info(f) for f in files]
    out = {"files": [describe(i) for i in infos]}
    if len(infos) == 2:
        text, mm = infos if not infos[0].is_mmproj else infos[::-1]
        problems = pair_problems(text, mm)
        out["pair"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(out, indent=None, default=str))
    else:
        for d in out["files"]:
            print(d["file"])
            for k, v in d.items():
                if k != "file":
                    print(f"  {k:<36} {v}")
        if "pair" in out:
            print("pair: OK, these files fit together" if out["pair"]["ok"]
                  else "pair: MISMATCH\n  - " + "\n  - ".join(out["pair"]["problems"]))
    return 0 if out.get("pair", {"ok": True})["ok"] else 3
