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
    names = {int(t): t.name for t in GGMLQuantizationType}
    counts = Counter(names.get(t.ggml_type, f"type{t.ggml_type}") for t in info.tensors)
    d = {"file": str(info.path), "architecture": arch, "tensors": len(info.tensors),
         "dtypes": dict(counts), "bytes": info.path.stat().st_size}
    for k in KEY_FIELDS + tuple(f"{arch}.{s}" for s in ("embedding_length", "block_count", "context_length")):
        if k in info.kv:
            d[k] = info.kv[k]
    if "tokenizer.ggml.tokens" in info.array_lengths:
        d["vocab_size"] = info.array_lengths["tokenizer.ggml.tokens"]
    return d


# how people read the keys describe() reports (JSON keeps the GGUF names)
LABELS = {"architecture": "architecture", "tensors": "tensors", "general.name": "name",
          "minicpmv_edge.family": "family", "clip.projector_type": "projector", "clip.minicpmv_version": "projector version",
          "clip.minicpmv_query_num": "tokens per image slice", "clip.vision.image_size": "slice size (px)",
          "clip.vision.projector.scale_factor": "merge factor", "tokenizer.ggml.model": "tokenizer",
          "tokenizer.ggml.pre": "pre-tokenizer", "vocab_size": "vocabulary (tokens)",
          "embedding_length": "embedding width", "block_count": "layers", "context_length": "training context (tokens)",
          "minicpmv_edge.image.positions": "image positions", "minicpmv_edge.image.small_image_upsize": "small images",
          "minicpmv_edge.image.downsample_mode": "downsample mode", "detected_family": "runtime detects"}


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def render(d: dict) -> str:
    """One file as an aligned two-column table: human labels, sizes in KiB/MiB/GiB, counts with separators."""
    from pathlib import Path

    rows = [("size", human_bytes(d["bytes"]))]
    for k, v in d.items():
        if k in ("file", "bytes"):
            continue
        if k == "dtypes":
            continue
        if k == "tensors":
            kinds = ", ".join(f"{name} {n:,}" for name, n in sorted(d["dtypes"].items(), key=lambda x: -x[1]))
            rows.append(("tensors", f"{v:,} ({kinds})" if kinds else f"{v:,}"))
            continue
        label = LABELS.get(k) or LABELS.get(k.split(".", 1)[-1]) or k
        rows.append((label, _value(v)))
    width = max(len(label) for label, _ in rows)
    return "\n".join([Path(d["file"]).name + f"  ({d['file']})"] + [f"  {label:<{width}}  {text}" for label, text in rows])


def run(args) -> int:
    from pathlib import Path

    from minicpmv_edge.errors import InputError
    from minicpmv_edge.gguf_info import family_label, pair_problems, read_info
    from minicpmv_edge.manifest import Manifest

    files = list(args.files)
    if len(files) == 1 and Path(files[0]).is_dir():
        m = Manifest.load(files[0])
        files = [str(m.path_of(files[0], "text")), str(m.path_of(files[0], "mmproj"))]
    if len(files) > 2:
        raise InputError("give one file, or a text model and its mmproj")
    infos = [read_info(f) for f in files]
    out = {"files": [describe(i) for i in infos]}
    texts = [i for i in infos if not i.is_mmproj]
    mms = [i for i in infos if i.is_mmproj]
    if texts:  # the runtime's own detection: our keys, or llama.cpp's standard keys
        out["files"][infos.index(texts[0])]["detected_family"] = family_label(texts[0], mms[0] if mms else None)
    if len(infos) == 2:
        text, mm = infos if not infos[0].is_mmproj else infos[::-1]
        problems = pair_problems(text, mm)
        out["pair"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(out, indent=None, default=str))
    else:
        for d in out["files"]:
            print(render(d))
        if "pair" in out:
            print("pair: OK, these files fit together" if out["pair"]["ok"]
                  else "pair: MISMATCH\n  - " + "\n  - ".join(out["pair"]["problems"]))
    return 0 if out.get("pair", {"ok": True})["ok"] else 3
