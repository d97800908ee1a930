"""Every lever on the vision encoder, at the real SigLIP-400M shape, against mtmd with the F16 projector.

Levers: the projector's storage type (F16, Q8_0, Q5_0, Q4_0: `minicpmv-edge quantize` of the F16
file; SigLIP's 4304-wide rows stay F16, K-quants do not fit its 1152/4304-wide rows), flash
attention in the vision graph (mtmd's flash_attn_type), thread count, ONNX Runtime (fp32, fp16,
int8 dynamic quantization of the fp32 graph), and two slices of one image encoded at once by two
encoder contexts with half the threads each (the MiniCPM-V clip graphs take one image per batch:
clip_graph_minicpmv::support_batch() is false at llama.cpp 0c1e570).

Each row: median ms per 448x448 slice, the ratio to mtmd F16 with the default settings, and the
smallest per-token cosine of its embeddings against that reference (fidelity floor 0.995).

  python bench/vision_levers.py --threads 2 --runs 3 [--text-hidden 4096] [--work /tmp/bench-vision]
      [--only mtmd,quant,fa,threads,onnx,parallel] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

import _common  # noqa: E402
import vision  # noqa: E402  (bench/vision.py: the real-shape checkpoint writer)

FA = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type


def cosines(ref: np.ndarray, got: np.ndarray) -> float:
    num = (ref * got).sum(1)
    return float((num / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)).min())


def time_mtmd(text: Path, mmproj: Path, rgb: np.ndarray, threads: int, runs: int, fa: str = "auto",
              contexts: int = 1) -> tuple[list[float], np.ndarray]:
    """ms per slice; with contexts=2, two slices at once on two encoder contexts (threads split)."""
    from minicpmv_edge.edge_runtime.engine import Bitmap, Model, Vision

    model = Model(str(text))
    per = max(1, threads // contexts)
    visions = [Vision(str(mmproj), model, n_threads=per, flash_attn=FA[fa]) for _ in range(contexts)]
    chunks = [v.tokenize(v.marker, [Bitmap(rgb, "bench")]) for v in visions]
    idx = next(i for i in range(len(chunks[0])) if chunks[0].kind(i) == 1)
    out: list = [None] * contexts
    times = []
    for r in range(runs + 1):  # the first run warms up (graph allocation)
        def work(k: int) -> None:
            out[k] = visions[k].encode_chunk(chunks[k][idx])

        t0 = time.perf_counter()
        if contexts == 1:
            work(0)
        else:
            ths = [threading.Thread(target=work, args=(k,)) for k in range(contexts)]
            for t in ths:
                t.start()
            for t in ths:
                t.join()
        times.append((time.perf_counter() - t0) * 1e3 / contexts)
    for c in chunks:
        c.close()
    for v in visions:
        v.close()
    model.close()
    return times[1:], out[0]


def time_onnx(export: Path, precision: str, rgb: np.ndarray, threads: int, runs: int) -> tuple[list[float], np.ndarray]:
    from minicpmv_edge.edge_runtime.external_encoder import OnnxVisionEncoder

    enc = OnnxVisionEncoder(export, precision=precision, n_threads=threads)
    (px,) = enc.slices(rgb)
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        got = enc.encode(px)
        times.append((time.perf_counter() - t0) * 1e3)
    return times[1:], got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--text-hidden", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/bench-vision")
    ap.add_argument("--only", default="mtmd,quant,fa,threads,onnx,parallel")
    ap.add_argument("--quant-types", default="Q8_0,Q5_0,Q4_0")
    ap.add_argument("--json", help="write all numbers here")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(args.work) / f"e{args.text_hidden}"
    ckpt, conv, onnx_dir = work / "ckpt", work / "gguf", work / "onnx"
    t_prep = time.perf_counter()
    if not (ckpt / "model.safetensors").exists():
        vision.write_checkpoint(ckpt, args.text_hidden)
    from minicpmv_edge.convert import convert
    from minicpmv_edge.quantize.mmproj import quantize_mmproj

    if not (conv / "manifest.json").exists():
        convert(ckpt, conv)
    from minicpmv_edge.manifest import Manifest

    man = Manifest.load(conv)
    text, f16 = Path(man.path_of(conv, "text")), Path(man.path_of(conv, "mmproj"))
    quant = {}
    if "quant" in only:
        for q in args.quant_types.split(","):
            path = conv / f"mmproj-{q.lower()}.gguf"
            if not path.exists():
                quantize_mmproj(f16, path, q)
            quant[q] = path
    if "onnx" in only and not (onnx_dir / "metadata.json").exists():
        from minicpmv_edge.convert.vision_export import export_vision

        export_vision(ckpt, onnx_dir, "onnx", grids=[(32, 32)], precisions=("fp32", "fp16"), verify=False)
    prep_s = time.perf_counter() - t_prep
    rgb = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    T = args.threads
    rows: list[dict] = []
    base_ms, ref = time_mtmd(text, f16, rgb, T, args.runs)
    base = statistics.median(base_ms)

    def add(lever: str, variant: str, ms: list[float], emb: np.ndarray | None) -> None:
        rows.append({"lever": lever, "variant": variant, "median_ms": statistics.median(ms), "min_ms": min(ms),
                     "ratio": statistics.median(ms) / base, "min_cos": cosines(ref, emb) if emb is not None else None})
        r = rows[-1]
        print(f"  {lever:9s} {variant:34s} {r['median_ms']:8.0f} ms  x{r['ratio']:.2f}  cos "
              f"{r['min_cos'] if r['min_cos'] is None else round(r['min_cos'], 5)}", flush=True)

    add("baseline", f"mtmd F16, FA auto, {T} threads", base_ms, ref)
    for q, path in quant.items():
        add("mmproj", f"mtmd {q}", *time_mtmd(text, path, rgb, T, args.runs))
    if "fa" in only:
        for fa in ("off", "on"):
            add("flash-attn", f"mtmd F16, FA {fa}", *time_mtmd(text, f16, rgb, T, args.runs, fa=fa))
    if "threads" in only and T > 1:
        add("threads", "mtmd F16, 1 thread", *time_mtmd(text, f16, rgb, 1, args.runs))
    if "parallel" in only and T > 1:
        add("parallel", f"mtmd F16, 2 slices at once x {T // 2} thr", *time_mtmd(text, f16, rgb, T, args.runs,
                                                                                 contexts=2))
        if "Q8_0" in quant:
            add("parallel", f"mtmd Q8_0, 2 slices at once x {T // 2} thr",
                *time_mtmd(text, quant["Q8_0"], rgb, T, args.runs, contexts=2))
    if "onnx" in only:
        from minicpmv_edge.edge_runtime.onnx_int8 import ensure_int8

        ensure_int8(onnx_dir)
        for p in ("fp32", "fp16", "int8"):
            add("onnx", f"ONNX Runtime CPU {p}", *time_onnx(onnx_dir, p, rgb, T, args.runs))
    machine = _common.machine_description()
    print(f"machine: {machine}")
    print(f"encoder: SigLIP 1152x27 ff 4304 + resampler 64x{args.text_hidden}; one 448x448 slice; {T} threads; "
          f"median of {args.runs} runs after a warm-up; load average {_common.loadavg():.1f}; prep {prep_s:.0f} s")
    table = [[r["lever"], r["variant"], f"{r['median_ms']:.0f}", f"{r['ratio']:.2f}",
              "-" if r["min_cos"] is None else f"{r['min_cos']:.5f}"] for r in rows]
    print(_common.table(table, ["lever", "variant", "ms/slice", "vs mtmd F16", "min token cos"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "threads": T, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
