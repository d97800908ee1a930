"""Benchmark: our quantizer vs llama.cpp's own `llama-quantize`, and lossless int4 repack vs requantizing.

    python bench/quantize.py [--work build/bench-quantize] [--layers 2] [--vocab 32768] [--reps 3]

1. Speed. A MiniCPM-V 4.5-shaped text model (Qwen3-8B rows: hidden 4096, FFN
   12288, 32 heads / 8 KV heads of 128; fewer layers and a smaller vocabulary
   than the real 36 / 151748, see flags) is written as F16 with random weights
   by gguf's writer. `minicpmv-edge quantize` (llama_model_quantize through
   llama-cpp-python, all cores) and `llama-quantize` built from the same
   llama.cpp source (cmake, target llama-quantize only, -DLLAMA_CURL=OFF
   -DGGML_NATIVE=ON, cached under --work) quantize it to Q4_K_M, alternating,
   --reps times each; the ratio of medians is printed (goal <= 1.05).
2. Accuracy. The tiny MiniCPM-V 4.5 fixture is quantized to GPTQ 4-bit (RTN,
   group 32, symmetric, and asymmetric) by quantize.int4_pack. Reference: an
   F32 GGUF of exactly the GPTQ-dequantized weights. Candidates: our lossless
   repack (Q4_0 / Q4_1) and dequantize -> llama.cpp Q4_0 / Q4_1 of the
   reference. KL(reference || candidate) over the shipped corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]


def build_llama_quantize(work: Path) -> Path:
    import llama_tools  # bench/llama_tools.py: the one place llama.cpp's CLI tools are built

    return llama_tools.build(["llama-quantize"])["llama-quantize"]


def make_f16(path: Path, layers: int, vocab: int) -> Path:
    """Qwen3-8B-shaped F16 text GGUF with random weights (streamed, one tensor in memory)."""
    from gguf import GGMLQuantizationType as Q

    from minicpmv_edge.convert.writer import PlannedTensor, write_gguf

    if path.exists():
        return path
    h, ff, nh, nkv, hd = 4096, 12288, 32, 8, 128
    shapes = {"token_embd.weight": (vocab, h), "output_norm.weight": (h,), "output.weight": (vocab, h)}
    for i in range(layers):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (h,), b + "ffn_norm.weight": (h,), b + "attn_q_norm.weight": (hd,),
                       b + "attn_k_norm.weight": (hd,), b + "attn_q.weight": (nh * hd, h),
                       b + "attn_k.weight": (nkv * hd, h), b + "attn_v.weight": (nkv * hd, h),
                       b + "attn_output.weight": (h, nh * hd), b + "ffn_gate.weight": (ff, h),
                       b + "ffn_up.weight": (ff, h), b + "ffn_down.weight": (h, ff)})
    rng = np.random.default_rng(0)

    def produce(shape):
        return lambda: (rng.standard_normal(shape, dtype=np.float32) * 0.02) if len(shape) == 2 \
            else np.ones(shape, np.float32)

    plan = [PlannedTensor(n, s, Q.F16 if len(s) == 2 else Q.F32, produce(s)) for n, s in shapes.items()]

    def meta(w):
        w.add_name("MiniCPM-V 4.5-shaped benchmark text model (random)")
        w.add_file_type(1)
        w.add_context_length(40960)
        w.add_embedding_length(h)
        w.add_block_count(layers)
        w.add_feed_forward_length(ff)
        w.add_head_count(nh)
        w.add_head_count_kv(nkv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_freq_base(1e6)
        w.add_layer_norm_rms_eps(1e-6)

    write_gguf(path, "qwen3", meta, plan)
    return path


def bench_speed(work: Path, layers: int, vocab: int, reps: int, qtype: str) -> dict:
    from minicpmv_edge.quantize.llama import quantize_text

    exe = build_llama_quantize(work)
    f16 = make_f16(work / f"qwen3-4.5shape-{layers}l-{vocab}v-f16.gguf", layers, vocab)
    threads = os.cpu_count() or 1
    ours, theirs = [], []
    with open(f16, "rb") as f:  # warm the page cache so neither side pays the first read
        while f.read(1 << 24):
            pass
    for r in range(reps):  # alternating, so background load hits both sides alike
        t = time.perf_counter()
        quantize_text(f16, work / "ours.gguf", qtype, nthread=threads)
        a = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([str(exe), str(f16), str(work / "theirs.gguf"), qtype, str(threads)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b = time.perf_counter() - t
        ours.append(a)
        theirs.append(b)
    same = (work / "ours.gguf").read_bytes()[-1 << 20:] == (work / "theirs.gguf").read_bytes()[-1 << 20:]
    out = {"input_gb": round(f16.stat().st_size / 1e9, 3), "type": qtype, "threads": threads,
           "ours_s": [round(x, 2) for x in ours], "llama_quantize_s": [round(x, 2) for x in theirs],
           "ratio_of_medians": round(statistics.median(ours) / statistics.median(theirs), 3),
           "outputs_same_size": (work / "ours.gguf").stat().st_size == (work / "theirs.gguf").stat().st_size,
           "last_mib_identical": same}
    for p in ("ours.gguf", "theirs.gguf"):
        (work / p).unlink()
    return out


def _float_checkpoint(src: Path, dst: Path, ref: dict) -> Path:
    """Copy of `src` with the int4-covered linears replaced by their exact dequantized values (F32)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    for k, v in ref.items():
        state[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def bench_int4(work: Path) -> list[dict]:
    from minicpmv_edge.convert import convert
    from minicpmv_edge.fixtures import make_checkpoint
    from minicpmv_edge.quantize.int4_pack import make_int4_checkpoint
    from minicpmv_edge.quantize.llama import quantize_text
    from minicpmv_edge.quantize.quality import text_quality

    base = work / "int4"
    ckpt = base / "fixture-4.5"
    if not (ckpt / "config.json").exists():
        make_checkpoint("minicpmv-4.5", ckpt, seed=0)
    rows = []
    for label, sym in (("gptq-sym-g32", True), ("gptq-asym-g32", False)):
        d = base / label
        ref = make_int4_checkpoint(ckpt, d / "ckpt", "gptq", sym=sym, group=32)
        repacked = convert(d / "ckpt", d / "repack", outtype="f32").text_path  # only int4 tensors differ
        reference = convert(_float_checkpoint(ckpt, d / "float", ref), d / "ref", outtype="f32").text_path
        qt = "Q4_0" if sym else "Q4_1"
        requant = quantize_text(reference, d / f"requant-{qt}.gguf", qt).path
        a = text_quality(reference, repacked, n_threads=1)
        b = text_quality(reference, requant, n_threads=1)
        rows.append({"checkpoint": label, "type": qt, "tokens": a.n_tokens,
                     "repack_kl_mean": a.kl_mean, "repack_kl_max": a.kl_max, "repack_top1": a.top1,
                     "requant_kl_mean": b.kl_mean, "requant_kl_max": b.kl_max, "requant_top1": b.top1})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "build" / "bench-quantize"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {}
    if not args.skip_speed:
        result["speed"] = bench_speed(work, args.layers, args.vocab, args.reps, args.type)
        s = result["speed"]
        print(f"speed  {s['type']} of {s['input_gb']} GB F16, {s['threads']} threads: ours {s['ours_s']} s, "
              f"llama-quantize {s['llama_quantize_s']} s, ratio {s['ratio_of_medians']} (goal <= 1.05)")
    result["int4"] = bench_int4(work)
    for r in result["int4"]:
        print(f"int4   {r['checkpoint']:<14} {r['type']}: KL mean repack {r['repack_kl_mean']:.3g} vs requant "
              f"{r['requant_kl_mean']:.3g}; KL max {r['repack_kl_max']:.3g} vs {r['requant_kl_max']:.3g}; "
              f"top-1 {r['repack_top1']:.2%} vs {r['requant_top1']:.2%}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
