"""Milliseconds per 448x448 slice: mtmd (llama.cpp, through our engine) vs ONNX Runtime CPU,
same machine, same thread count, for a SigLIP-400M-shaped encoder with its resampler.

A synthetic checkpoint in the MiniCPM-V 4.5 layout is written with random bf16 weights at
the real vision shapes (hidden 1152, 27 layers, ff 4304, 16 heads, patch 14, 4900
positions; resampler 64 queries to --text-hidden 4096 (4.5) or 2560 (4.0-sized)) and a
one-layer text model of that width (mtmd refuses a projector whose width differs from
the text model's). Our converter makes the GGUF pair (mmproj f16, as shipped) and
`export-vision` the ONNX graphs; both encode the same 448x448 image.

  python bench/vision.py --threads 2 --runs 5 [--text-hidden 2560] [--work /tmp/bench-vision]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

V, V_FF, V_HEADS, V_LAYERS, PATCH, QUERIES = 1152, 4304, 16, 27, 14, 64


def _bf16(rng, shape, std=0.02, const=None) -> bytes:
    a = np.full(shape, const, np.float32) if const is not None else (rng.standard_normal(shape, np.float32) * std)
    return (a.view(np.uint32) >> 16).astype("<u2").tobytes()


def write_checkpoint(out: Path, E: int, seed: int = 0) -> Path:
    """Tokenizer/config from the tiny 4.5 fixture, tensors at real vision shapes."""
    from minicpmv_edge.fixtures import make_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    tiny = make_checkpoint("minicpmv-4.5", out / "tiny", seed=seed)
    cfg = json.loads((tiny / "config.json").read_text())
    for f in tiny.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, out / f.name)
    vocab, hd, heads, kv, ff = cfg["vocab_size"], 128, E // 128, 8, 256
    cfg.update(hidden_size=E, num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, num_hidden_layers=1,
               intermediate_size=ff, layer_types=["full_attention"], max_window_layers=1)
    cfg["vision_config"].update(hidden_size=V, intermediate_size=V_FF, num_attention_heads=V_HEADS,
                                num_hidden_layers=V_LAYERS)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    shapes: dict[str, tuple] = {
        "llm.model.embed_tokens.weight": (vocab, E), "llm.lm_head.weight": (vocab, E), "llm.model.norm.weight": (E,),
        "llm.model.layers.0.input_layernorm.weight": (E,), "llm.model.layers.0.post_attention_layernorm.weight": (E,),
        "llm.model.layers.0.self_attn.q_proj.weight": (heads * hd, E),
        "llm.model.layers.0.self_attn.k_proj.weight": (kv * hd, E),
        "llm.model.layers.0.self_attn.v_proj.weight": (kv * hd, E),
        "llm.model.layers.0.self_attn.o_proj.weight": (E, heads * hd),
        "llm.model.layers.0.self_attn.q_norm.weight": (hd,), "llm.model.layers.0.self_attn.k_norm.weight": (hd,),
        "llm.model.layers.0.mlp.gate_proj.weight": (ff, E), "llm.model.layers.0.mlp.up_proj.weight": (ff, E),
        "llm.model.layers.0.mlp.down_proj.weight": (E, ff),
        "vpm.embeddings.patch_embedding.weight": (V, 3, PATCH, PATCH), "vpm.embeddings.patch_embedding.bias": (V,),
        "vpm.embeddings.position_embedding.weight": (4900, V),
        "vpm.post_layernorm.weight": (V,), "vpm.post_layernorm.bias": (V,),
        "resampler.query": (QUERIES, E), "resampler.kv_proj.weight": (E, V),
        "resampler.attn.in_proj_weight": (3 * E, E), "resampler.attn.in_proj_bias": (3 * E,),
        "resampler.attn.out_proj.weight": (E, E), "resampler.attn.out_proj.bias": (E,), "resampler.proj": (E, E),
    }
    for n in ("q", "kv", "post"):
        shapes[f"resampler.ln_{n}.weight"] = shapes[f"resampler.ln_{n}.bias"] = (E,)
    for i in range(V_LAYERS):
        p = f"vpm.encoder.layers.{i}."
        for n in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.{n}_proj.weight"], shapes[f"{p}self_attn.{n}_proj.bias"] = (V, V), (V,)
        for n in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{n}.weight"] = shapes[f"{p}{n}.bias"] = (V,)
        shapes[f"{p}mlp.fc1.weight"], shapes[f"{p}mlp.fc1.bias"] = (V_FF, V), (V_FF,)
        shapes[f"{p}mlp.fc2.weight"], shapes[f"{p}mlp.fc2.bias"] = (V, V_FF), (V,)
    rng = np.random.default_rng(seed)
    header, off = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shape in shapes.items():
            norm = ("norm" in name or "ln_" in name) and name.endswith("weight")
            bias = name.endswith("bias") or ("norm" in name and name.endswith("bias"))
            f.write(_bf16(rng, shape, const=1.0 if norm else (0.0 if bias else None)))
    shutil.rmtree(tiny)
    return out


def bench_mtmd(text: Path, mmproj: Path, rgb: np.ndarray, threads: int, runs: int) -> list[float]:
    from minicpmv_edge.edge_runtime.engine import Bitmap, Model, Vision

    model = Model(str(text))
    vis = Vision(str(mmproj), model, n_threads=threads)
    chunks = vis.tokenize(vis.marker, [Bitmap(rgb, "bench")])
    img = next(i for i in range(len(chunks)) if chunks.kind(i) == 1)
    times = []
    for _ in range(runs + 1):  # first run warms up (graph allocation)
        t0 = time.perf_counter()
        out = vis.encode_chunk(chunks[img])
        times.append((time.perf_counter() - t0) * 1e3)
    bench_mtmd.last = out
    chunks.close()
    vis.close()
    model.close()
    return times[1:]


def bench_onnx(export_dir: Path, precision: str, rgb: np.ndarray, threads: int, runs: int) -> list[float]:
    from minicpmv_edge.edge_runtime.external_encoder import OnnxVisionEncoder

    enc = OnnxVisionEncoder(export_dir, precision=precision, n_threads=threads)
    (px,) = enc.slices(rgb)
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        out = enc.encode(px)
        times.append((time.perf_counter() - t0) * 1e3)
    bench_onnx.last = out
    return times[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--text-hidden", type=int, default=4096, help="resampler output width: 4096 (4.5) or 2560")
    ap.add_argument("--precision", default="fp32,fp16", help="ONNX graphs to time")
    ap.add_argument("--work", default="/tmp/bench-vision")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and exports")
    args = ap.parse_args()
    work = Path(args.work) / f"e{args.text_hidden}"
    ckpt, conv_dir, onnx_dir = work / "ckpt", work / "gguf", work / "onnx"
    precs = [p for p in args.precision.split(",") if p]
    t = time.perf_counter()
    if not (ckpt / "model.safetensors").exists():
        write_checkpoint(ckpt, args.text_hidden)
    from minicpmv_edge.convert import convert
    from minicpmv_edge.convert.vision_export import export_vision

    res = convert(ckpt, conv_dir)
    export_vision(ckpt, onnx_dir, "onnx", grids=[(32, 32)], precisions=tuple(precs), verify=False)
    prep_s = time.perf_counter() - t
    rgb = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    rows, results = [], {}
    ms = bench_mtmd(res.text_path, res.mmproj_path, rgb, args.threads, args.runs)
    results["mtmd (llama.cpp, mmproj f16)"] = ms
    ref = bench_mtmd.last
    for p in precs:
        results[f"ONNX Runtime CPU {p}"] = bench_onnx(onnx_dir, p, rgb, args.threads, args.runs)
        got = bench_onnx.last
        cos = float(((ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)).min())
        results[f"ONNX Runtime CPU {p}"].append(("cos", cos))
    base = statistics.median(ms)
    for name, ts in results.items():
        extra = [x for x in ts if isinstance(x, tuple)]
        ts = [x for x in ts if not isinstance(x, tuple)]
        med = statistics.median(ts)
        rows.append([name, f"{med:.0f}", f"{min(ts):.0f}", f"{med / base:.2f}",
                     f"{extra[0][1]:.5f}" if extra else "-"])
    m = _common.machine_description()
    print(f"machine: {m}")
    print(f"encoder: SigLIP {V}x{V_LAYERS} layers ff {V_FF} heads {V_HEADS} + resampler {QUERIES}x{args.text_hidden}; "
          f"one 448x448 slice; threads {args.threads}; {args.runs} timed runs after 1 warm-up; prep {prep_s:.0f} s")
    print(_common.table(rows, ["encoder", "median ms", "min ms", "vs mtmd", "min token cos vs mtmd"]))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
