"""`minicpmv-edge demo`: the whole pipeline on a built-in tiny model, step by step.

Builds a tiny random checkpoint in the exact Hugging Face layout, converts it,
loads the pair through llama.cpp and answers one image+text prompt. The weights
are random, so the answer is noise; the point is that every step runs.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

EXAMPLES = """examples:
  minicpmv-edge demo
  minicpmv-edge demo --family minicpmv-4.6 --keep ./demo-out

with real weights instead:
  minicpmv-edge convert ~/models/MiniCPM-V-4_5 -o out/v45
  minicpmv-edge run out/v45 --image photo.jpg -p "What is in the image?\""""


def add_parser(sub) -> None:
    from ._common import add_command, add_json

    p = add_command(sub, "demo", "convert and run a built-in tiny model end to end (no downloads)", EXAMPLES)
    p.add_argument("--family", default="minicpmv-4.5",
                   help="minicpmv-2.6, minicpmv-4.0, minicpmv-4.5, minicpmv-4.6, minicpmv-4.6-4x")
    p.add_argument("--keep", metavar="DIR", help="keep the checkpoint and GGUF files in DIR")
    add_json(p)
    p.set_defaults(run=run)


def _demo_image():
    import numpy as np
    from PIL import Image, ImageDraw

    x = np.linspace(0, 255, 640, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (480, 1)), np.tile(x[:480, None], (1, 640)), np.full((480, 640), 96, np.uint8)], -1)
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    d.ellipse((220, 140, 420, 340), fill=(250, 220, 40))
    d.rectangle((40, 40, 160, 120), outline=(255, 255, 255), width=4)
    return im


def run(args) -> int:
    from minicpmv_edge.extras import require

    require("fixtures", "demo (it builds a tiny checkpoint with transformers)")
    require("runtime", "demo")
    from minicpmv_edge.convert import convert
    from minicpmv_edge.edge_runtime import MiniCPMV
    from minicpmv_edge.fixtures import FAMILIES, make_checkpoint
    from minicpmv_edge.errors import InputError

    if args.family not in FAMILIES:
        raise InputError(f"unknown demo family {args.family!r}; choose one of {', '.join(FAMILIES)}")
    say = (lambda *a: None) if args.json else print
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="minicpmv-edge-demo-")
    root = Path(args.keep or tmp.name)
    report: dict = {"family": args.family}
    try:
        say(f"[1/4] building a tiny random {args.family} checkpoint (Hugging Face layout)")
        t = time.perf_counter()
        ckpt = make_checkpoint(args.family, root / "checkpoint")
        report["checkpoint_s"] = round(time.perf_counter() - t, 2)
        for f in sorted(ckpt.iterdir()):
            say(f"      {f.name:<34} {f.stat().st_size:>10,} bytes")
        say("[2/4] converting: minicpmv-edge convert checkpoint -o gguf")
        res = convert(ckpt, root / "gguf")
        report.update(convert_s=round(res.seconds, 3), text=str(res.text_path), mmproj=str(res.mmproj_path))
        for p in (res.text_path, res.mmproj_path, res.text_path.parent / "manifest.json"):
            say(f"      wrote {p}  ({p.stat().st_size:,} bytes)")
        say(f"      took {res.seconds * 1e3:.0f} ms")
        say("[3/4] loading the pair through llama.cpp (llama-cpp-python + mtmd)")
        model = MiniCPMV.from_folder(root / "gguf", n_ctx=2048)
        say(f"      loaded in {model.load_ms:.0f} ms; prompt format from GGUF metadata: {model.format.family}")
        say("[4/4] asking about a 640x480 image (random weights: the answer is noise)")
        question = "What is in the image?"
        msgs = [{"role": "user", "content": [_demo_image(), question]}]
        say(f"      user: <image> {question}")
        say("      assistant: ", end="") if not args.json else None
        for piece in model.chat(msgs, stream=True, max_tokens=24, temperature=0, seed=0):
            if not args.json:
                print(piece.text, end="", flush=True)
        r = model.last_result
        say()
        tm = r.timings
        say(f"      load {tm.load_ms:.0f} ms | image encode {' + '.join(f'{x:.0f}' for x in tm.image_encode_ms)} ms"
            f" | prefill {tm.prefill_tok_s:.1f} tok/s | decode {tm.decode_tok_s:.1f} tok/s"
            f" | peak RSS {tm.peak_rss_mb:.0f} MB")
        report.update(answer=r.text, timings=tm.as_dict(), usage=r.usage)
        model.close()
        say("done. With real weights: minicpmv-edge convert <hf-dir> -o out && minicpmv-edge run out --image x.jpg")
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps(report))
    return 0
