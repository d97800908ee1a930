"""Processor-exact images vs mtmd's own preprocessing, for the merger families (4.6, OCR).

Builds the tiny fixture of FAMILY, converts it, and compares next-token logits of the runtime
(processor-exact crops, one position per token) and of mtmd's path (mtmd_tokenize + its helper's
positions) with transformers' forward and processor (tests/reference/merger_e2e.py), on a sliced
1000x600 image, two images and a 448x448 image. Prints max |diff| as % of the logit range.

    python bench/processor_exact.py minicpmv-4.6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["minicpmv-4.6", "minicpmv-4.6-4x", "minicpm-ocr-1.0"])
    args = ap.parse_args()
    from PIL import Image

    from minicpmv_edge.convert import convert
    from minicpmv_edge.edge_runtime.api import MiniCPMV
    from minicpmv_edge.edge_runtime.engine import Vision
    from minicpmv_edge.edge_runtime.messages import normalize
    from minicpmv_edge.edge_runtime.session import Session
    from minicpmv_edge.fixtures import make_checkpoint
    from tests.reference.merger_e2e import MergerReference, processor_text
    from tests.runtime_helpers import noise_image
    from tests.test_families_e2e import _photo

    work = Path(tempfile.mkdtemp(prefix="processor-exact-"))
    src = make_checkpoint(args.family, work / "ckpt")
    res = convert(src, work / "out")
    ref = MergerReference(src)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    mtmd = Session(m._ctx, Vision(str(res.mmproj_path), m.model, n_threads=2), m.cache)
    cases = {"1000x600": [_photo(1000, 600, 1)], "300x200 + 700x500": [_photo(300, 200, 2), noise_image(700, 500, 3)],
             "448x448": [_photo(448, 448, 4)]}
    print("| family | image(s) | processor-exact | mtmd path |\n|---|---|---|---|")
    for name, imgs in cases.items():
        pil = [Image.fromarray(x) for x in imgs]
        turns = normalize([{"role": "user", "content": pil + ["What is in this photo?"]}], m.limits)
        prompt, bitmaps = m.build_prompt(turns, enable_thinking=False)
        want = ref.next_token_logits(ref.inputs(processor_text(prompt, m.vision.marker), images=pil))
        span = float(want.max() - want.min())
        m.reset()
        m.session.prefill(prompt, bitmaps)
        new = m._ctx.logits()
        m._ctx.clear()
        mtmd.prefill(prompt, bitmaps)
        old = m._ctx.logits()
        pct = [100 * float(np.abs(x - want).max()) / span for x in (new, old)]
        print(f"| {args.family} | {name} | {pct[0]:.3f}% | {pct[1]:.3f}% |")
    m.close()


if __name__ == "__main__":
    main()
